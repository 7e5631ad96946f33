"""A stop waits for the batch in flight, however long it runs: a SIGTERM to the job, or another
rank's failure, while a rank runs a batch longer than the liveness grace (about 5 s here) loses
nothing that was computing when it came. Real processes on CPU."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import (
    FAST_LIVENESS,
    LAUNCHER,
    TEXTS,
    assert_complete,
    run_in_process,
    start,
    start_ranks,
    subprocess_env,
    torchrun_cmd,
    wait_all,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

N = 24
LONG_S = 10  # a batch on rank 1: twice the watcher's old grace of max(2 x heartbeat, 5 s)
SLOW_RANK_1 = ["fault.slow_rank=1", f"fault.delay_s={LONG_S}", "fault.attempt=0"]


def job(tmp_path, model) -> list[str]:
    write_jsonl(tmp_path / "in.jsonl", [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(N)])
    return [f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            "output.path=out.jsonl", "run.name=job", "data.unit_size=6", "batch_size=2",
            "log.level=DEBUG"]  # fmt: skip


def batches_logged(tmp_path, rank: int) -> list[int]:
    """The running count of inputs after each batch ``rank`` finished (its DEBUG lines)."""
    log = tmp_path / "runs" / "job" / "logs" / f"rank{rank}.log"
    text = log.read_text() if log.exists() else ""
    return [int(n) for n in re.findall(r"input\(s\) done \((\d+) this attempt\)", text)]


def long_batch_began(tmp_path, rank: int) -> bool:
    """Whether ``rank`` has begun its second long batch (fault.delay_s logs each)."""
    log = tmp_path / "runs" / "job" / "logs" / f"rank{rank}.log"
    return log.exists() and "fault.delay_s: batch 1 waits" in log.read_text()


def computed(tmp_path) -> int:
    return sum((batches_logged(tmp_path, r) or [0])[-1] for r in (0, 1))


def rerun_computes(tmp_path, args) -> int:
    run_in_process(args, cwd=tmp_path)
    return json.loads((tmp_path / "runs" / "job" / "stats" / "rank0.json").read_text())["rows"]


def test_sigterm_waits_for_a_batch_longer_than_the_grace(tmp_path, bert_embedder):
    args = job(tmp_path, bert_embedder)
    log = tmp_path / "torchrun.log"
    # rank 1 holds before its first batch, its first unit claimed: started late on a busy
    # machine, it would otherwise find every unit taken by rank 0 and run no long batch
    hold = tmp_path / "hold"
    hold.touch()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            torchrun_cmd([*args, *FAST_LIVENESS, *SLOW_RANK_1, f"fault.hold_file={hold}"], 2),
            cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    rank1_log = tmp_path / "runs" / "job" / "logs" / "rank1.log"
    try:
        wait_for(lambda: rank1_log.exists() and "holds before" in rank1_log.read_text(), 600)
        hold.unlink()
        wait_for(lambda: long_batch_began(tmp_path, 1), timeout=600)
        os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler stops a job: every process
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    for rank in (0, 1):
        assert f"rank {rank}: stopped by SIGTERM; finished work is kept" in text, text
    assert len(batches_logged(tmp_path, 1)) >= 2, text  # the batch in flight finished
    done = computed(tmp_path)
    assert done < N, text
    assert rerun_computes(tmp_path, args) == N - done  # nothing that ran was lost
    assert_complete(tmp_path, N)


def test_one_process_with_a_hung_batch_ends_as_stalled_even_after_sigterm(job):
    """No torchrun, no process group: run.stall_after_s holds all the same, and a SIGTERM
    waits for the hung batch only that long."""
    tmp_path, args = job
    hang = ["fault.rank=0", "fault.kind=hang", "fault.at_unit=1", "run.stall_after_s=3"]
    proc = start([sys.executable, str(LAUNCHER), *args, "run.heartbeat_s=0.5", *hang],
                 tmp_path, tmp_path / "out.log")  # fmt: skip
    try:
        log = tmp_path / "runs" / "job" / "logs" / "rank0.log"
        wait_for(lambda: log.exists() and "injected fault.kind=hang" in log.read_text(), 180)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "out.log").read_text()
    assert code == 1, out
    assert "ddpinfer: rank 0: rank 0 stalled: finished no batch for" in out, out


def test_a_peer_failure_waits_for_a_batch_in_flight(tmp_path, bert_embedder):
    """Rank 0 (which hosts the store and holds the run directory's lock) raises at its second
    unit, while rank 1 runs its first long batch."""
    args = job(tmp_path, bert_embedder)
    fault = ["fault.rank=0", "fault.at_unit=1"]
    procs = start_ranks([*args, *FAST_LIVENESS, *SLOW_RANK_1, *fault], 2, tmp_path)
    codes = wait_all(procs, timeout=180)
    outs = [(tmp_path / f"rank{r}.out").read_text() for r in (0, 1)]
    assert codes == [1, 3], outs
    assert "stopping because rank 0 failed: InjectedFault" in outs[1], outs
    assert batches_logged(tmp_path, 1), outs  # its batch in flight finished
    done = computed(tmp_path)
    assert rerun_computes(tmp_path, args) == N - done
    assert_complete(tmp_path, N)
