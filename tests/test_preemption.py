"""A stop costs at most the batches in flight, not a window: stopped mid-window by SIGTERM,
Ctrl-C or a kill -9, a re-run computes only the inputs not yet done (plus at most one batch per
rank), and the output equals a fresh run's. A slow rank's unstarted work goes to the others.
Real torchrun runs on CPU."""

import re
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import (
    FAST_LIVENESS,
    TEXTS,
    read_jsonl,
    run_in_process,
    start_ranks,
    subprocess_env,
    torchrun_cmd,
    wait_all,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

N, BATCH = 96, 4
# Units of 32 inputs and batches of 4: every window spans at least 8 batches.
SLOW_WINDOWS = ["data.unit_size=32", f"batch_size={BATCH}", "log.level=DEBUG"]


def job(tmp_path, model, *extra) -> list[str]:
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and more ' * (i % 5)}#{i}" for i in range(N)]
    write_jsonl(tmp_path / "in.jsonl", texts)
    return [f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            "output.path=out.jsonl", "run.name=job", *SLOW_WINDOWS, *extra]  # fmt: skip


def computed_before_the_stop(tmp_path, world_size: int) -> int:
    """Inputs the stopped attempt computed, kept or not: the last count each rank logged."""
    total = 0
    for rank in range(world_size):
        log = (tmp_path / "runs" / "job" / "logs" / f"rank{rank}.log").read_text()
        counts = re.findall(r"batch of \d+ input\(s\) done \((\d+) this attempt\)", log)
        total += int(counts[-1]) if counts else 0
    return total


def rerun_computes(tmp_path, args) -> int:
    """Run the same command again (one process) and return how many inputs it computed."""
    import json

    run_in_process(args, cwd=tmp_path)
    stats = json.loads((tmp_path / "runs" / "job" / "stats" / "rank0.json").read_text())
    return stats["rows"]


def assert_fresh_output(tmp_path, args, task_column):
    fresh = [*args, "output.path=fresh.jsonl", "run.name=fresh"]
    run_in_process(fresh, cwd=tmp_path)
    ours, reference = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "fresh.jsonl")
    assert [r["id"] for r in ours] == [r["id"] for r in reference] == [f"doc-{i}" for i in range(N)]
    if task_column == "embedding":
        np.testing.assert_allclose(
            [r["embedding"] for r in ours], [r["embedding"] for r in reference], atol=1e-5
        )
    else:
        assert [r[task_column] for r in ours] == [r[task_column] for r in reference]


def stop_torchrun(cmd, tmp_path, sig, after_rows: int) -> tuple[int, str]:
    """Start ``cmd`` in its own process group, send ``sig`` to the whole group (as a terminal's
    Ctrl-C does, or a scheduler) once ``after_rows`` inputs are done, and wait. The ranks are
    held before their next batch (``fault.hold_file``) until the signal is sent: it finds the
    job mid-way however slowly a busy machine delivers it."""
    import os

    log, hold = tmp_path / "torchrun.log", tmp_path / "hold"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, f"fault.hold_file={hold}"], cwd=tmp_path, env=subprocess_env(), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _logged_rows(tmp_path) >= after_rows, timeout=600)
        hold.touch()
        wait_for(lambda: "fault.hold_file: rank" in _rank_logs(tmp_path), timeout=600)
        os.killpg(proc.pid, sig)
        hold.unlink()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, log.read_text()


def _rank_logs(tmp_path) -> str:
    return "".join(p.read_text() for p in (tmp_path / "runs" / "job" / "logs").glob("rank*.log"))


def _logged_rows(tmp_path) -> int:
    logs = tmp_path / "runs" / "job" / "logs"
    if not logs.is_dir():
        return 0
    return sum(
        int(counts[-1]) if (counts := re.findall(r"\((\d+) this attempt\)", p.read_text())) else 0
        for p in logs.glob("rank*.log")
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_mid_window_keeps_every_finished_batch(tmp_path, bert_embedder, sig):
    args = job(tmp_path, bert_embedder)
    cmd = torchrun_cmd([*args, "fault.delay_s=0.3"], 2)
    code, out = stop_torchrun(cmd, tmp_path, sig, after_rows=N // 3)
    name = signal.Signals(sig).name
    assert f"ddpinfer: rank 0: stopped by {name}; finished work is kept" in out, out
    assert f"ddpinfer: rank 1: stopped by {name}; finished work is kept" in out, out
    assert "KeyboardInterrupt" not in out and "[rank1]:" not in out, out
    done = computed_before_the_stop(tmp_path, 2)
    assert N // 3 <= done < N  # stopped mid-window: no unit of the first windows was whole
    assert rerun_computes(tmp_path, args) <= N - done + 2 * BATCH
    assert_fresh_output(tmp_path, args, "embedding")


def _written_rows(tmp_path) -> int:
    """Inputs whose results are on disk: in a journal or a part (-1 while one changes)."""
    from ddpinfer.errors import UserError
    from ddpinfer.rundir.journal import journals, read_journal
    from ddpinfer.rundir.parts import read_part

    run_dir = tmp_path / "runs" / "job"
    rows: set[int] = set()
    try:
        for path in journals(run_dir):
            for table in read_journal(path):
                rows.update(table.column("row").to_pylist())
        for path in (run_dir / "parts").glob("*/unit-*.arrow"):
            rows.update(read_part(path)[0].column("row").to_pylist())
    except (OSError, UserError):
        return -1
    return len(rows)


def test_kill_9_of_a_worker_mid_window_loses_at_most_its_batch_in_flight(tmp_path, bert_embedder):
    """Both ranks are held (fault.hold_file) once a third of the inputs is done, until every
    batch they logged as done is written: the kill then comes mid-window at a known point, not
    wherever a busy machine's writer thread happened to be."""
    args = job(tmp_path, bert_embedder)
    hold = tmp_path / "hold"
    procs = start_ranks(
        [*args, *FAST_LIVENESS, "fault.delay_s=0.3", f"fault.hold_file={hold}"], 2, tmp_path
    )
    logs = [tmp_path / "runs" / "job" / "logs" / f"rank{r}.log" for r in (0, 1)]
    try:
        wait_for(lambda: _logged_rows(tmp_path) >= N // 3, timeout=300)
        hold.touch()
        wait_for(lambda: all("fault.hold_file: rank" in log.read_text() for log in logs), 300)
        wait_for(lambda: _written_rows(tmp_path) == _logged_rows(tmp_path), timeout=600)
        procs[1].send_signal(signal.SIGKILL)
        hold.unlink()
        codes = wait_all(procs, timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert codes[1] == -signal.SIGKILL and codes[0] == 3, codes
    done = computed_before_the_stop(tmp_path, 2)
    assert done < N
    assert rerun_computes(tmp_path, args) <= N - done + 2 * BATCH
    assert_fresh_output(tmp_path, args, "embedding")


def test_generation_stopped_mid_window_resumes_to_the_same_text(tmp_path, gpt2_generator):
    args = [*job(tmp_path, gpt2_generator), "task=generate", "task.max_new_tokens=4"]
    args = [a for a in args if not a.startswith("data.unit_size")] + ["data.unit_size=48"]
    cmd = torchrun_cmd([*args, "fault.delay_s=0.3"], 2)
    code, out = stop_torchrun(cmd, tmp_path, signal.SIGTERM, after_rows=N // 4)
    done = computed_before_the_stop(tmp_path, 2)
    assert done < N, out
    assert rerun_computes(tmp_path, args) <= N - done + 2 * BATCH
    assert_fresh_output(tmp_path, args, "generated_text")


def test_a_10x_slower_rank_leaves_its_unstarted_work_to_the_other(tmp_path, bert_embedder):
    import json

    args = job(tmp_path, bert_embedder, "data.unit_size=4", "fault.slow_rank=1")
    args = [a for a in args if a != "data.unit_size=32"]
    began = time.monotonic()
    # rank 0 runs a batch in about 0.03 s here; rank 1 sleeps 0.3 s before each of its batches
    result = subprocess.run(
        torchrun_cmd([*args, "fault.delay_s=0.3"], 2), cwd=tmp_path, env=subprocess_env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = [
        json.loads((tmp_path / "runs" / "job" / "stats" / f"rank{r}.json").read_text())
        for r in (0, 1)
    ]
    fast, slow = (s["rows"] for s in stats)
    assert fast + slow == N
    # its fair share is 1/11 of the work (9 inputs); its first window once held a quarter (24)
    assert slow <= N // 6, (fast, slow)
    assert time.monotonic() - began < 900  # far below a rank waiting out the slow one's work
