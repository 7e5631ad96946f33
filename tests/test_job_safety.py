"""Jobs that cannot collide, waits with a deadline, exit codes that tell the truth (issue 8,
cases 4, 5, 7, 8 and 9). Real processes on CPU: plain ranks, torchrun, two torchrun "nodes"."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import (
    FAST_LIVENESS,
    LAUNCHER,
    TEXTS,
    assert_complete,
    free_port,
    job_parts,
    launch,
    run_in_process,
    start,
    start_ranks,
    subprocess_env,
    torchrun_cmd,
    two_node_rendezvous,
    wait_all,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

N = 24


def last_line(text: str, rank: int) -> str:
    return [x for x in text.splitlines() if x.startswith(f"ddpinfer: rank {rank}:")][-1]


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()


def test_a_second_job_on_the_same_directory_stops_at_once(job):
    tmp_path, args = job
    # 12 batches of 2 s in windows of one unit: its first part comes after 4 s, 20 s before the
    # end; from there it holds (fault.hold_file) until the second job was refused, however long
    # that job takes to start on a busy machine
    hold = tmp_path / "hold"
    slow = ["fault.delay_s=2", "batch.sort_rows=4", f"fault.hold_file={hold}"]
    first = start([sys.executable, str(LAUNCHER), *args, *slow], tmp_path, tmp_path / "first.log")
    try:
        wait_for(lambda: len(job_parts(tmp_path)) >= 1, timeout=300)
        hold.touch()
        wait_for(held_at_batch(tmp_path / "runs" / "job" / "logs" / "rank0.log"), timeout=300)
        # The same command again, even with run.fresh=true: refused before touching anything.
        second = launch([*args, "run.fresh=true"], cwd=tmp_path, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"is in use by pid {first.pid} on " in second.stderr
        assert job_parts(tmp_path)  # the first job's parts are still there
        first.send_signal(signal.SIGKILL)  # gone without releasing its lock
        first.wait(timeout=300)
    finally:
        stop_all([first])
    run_in_process(args, cwd=tmp_path)
    log = (tmp_path / "runs" / "job" / "logs" / "rank0.log").read_text()
    assert "took over" in log and "no longer runs" in log
    assert_complete(tmp_path, N)


def test_a_job_frozen_between_its_fence_and_its_write_writes_nothing_once_taken_over(job):
    """The lock fence is checked once a write is prepared, right before it becomes visible: a
    job frozen there (SIGSTOP, a suspended VM) past run.dead_after_s, whose lock another job
    took over meanwhile, writes nothing when it wakes up."""
    import time

    tmp_path, args = job
    hold_write, hold_batch = tmp_path / "hold-write", tmp_path / "hold-batch"
    hold_write.touch()
    hold_batch.touch()
    plain = [sys.executable, str(LAUNCHER), *args, *FAST_LIVENESS]
    first = start([*plain, f"fault.write_hold_file={hold_write}"], tmp_path, tmp_path / "a.log")
    second = None
    try:
        wait_for(said(tmp_path / "a.log", "rank 0 holds before a write"), timeout=300)
        os.kill(first.pid, signal.SIGSTOP)
        lock = tmp_path / "runs" / "job" / "run.lock"
        wait_for(lambda: time.time() - json.loads(lock.read_text())["heartbeat"] > 5, 300)
        second = start([*plain, f"fault.hold_file={hold_batch}"], tmp_path, tmp_path / "b.log")
        wait_for(said(tmp_path / "b.log", "rank 0 holds before its batch"), timeout=300)
        assert "took over" in (tmp_path / "b.log").read_text()
        hold_write.unlink()
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 2
        assert "was taken over by" in (tmp_path / "a.log").read_text()
        parts = tmp_path / "runs" / "job" / "parts"
        assert not list(parts.iterdir()) if parts.is_dir() else True  # no part, no journal
        hold_batch.unlink()
        assert second.wait(timeout=300) == 0, (tmp_path / "b.log").read_text()
    finally:
        stop_all([first, *([second] if second else [])])
    assert_complete(tmp_path, N)


def said(log: Path, words: str):
    return lambda: log.is_file() and words in log.read_text()


def static_torchrun(args: list[str], port: int) -> list[str]:
    """torchrun with a static rendezvous on ``port``: its run id is "none", as for every job
    started that way."""
    static = ["--rdzv-backend=static", "--master_addr=127.0.0.1", f"--master_port={port}"]
    return torchrun_cmd(args, 1, *static)


def held_at_batch(log: Path, rank: int = 0):
    """A predicate: ``log`` says ``rank`` holds (fault.hold_file) before one of its batches."""
    said = f"fault.hold_file: rank {rank} holds before its batch"
    return lambda: log.is_file() and said in log.read_text()


def test_jobs_that_share_a_run_id_or_a_host_never_share_a_lock_and_a_lost_lock_stops_at_once(job):
    tmp_path, args = job
    hold = tmp_path / "hold"  # the first job runs until the other two were refused
    hold.touch()
    first = subprocess.Popen(
        static_torchrun([*args, f"fault.hold_file={hold}"], free_port()),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(held_at_batch(tmp_path / "runs" / "job" / "logs" / "rank0.log"), timeout=300)
        # the same command with another --master_port: the same run id "none", another job
        second = launch_cmd(static_torchrun(args, free_port()), tmp_path)
        assert "error: run directory runs/job is in use by pid" in second.stderr, second.stderr
        # another PID namespace on this host (a container with host networking): the first
        # job's pid is missing there, which says nothing about it
        plain = [sys.executable, str(LAUNCHER), *args]
        third = launch_cmd(["unshare", "--pid", "--fork", "--mount-proc", *plain], tmp_path)
        assert third.returncode == 2 and "is in use by pid" in third.stderr, third.stderr
        assert first.poll() is None  # still running, and still the lock's owner
        # Taken over, as a job frozen past run.dead_after_s would find: it stops at once.
        lock = tmp_path / "runs" / "job" / "run.lock"
        taken = {**json.loads(lock.read_text()), "token": "another-job", "job": "later"}
        lock.write_text(json.dumps(taken))
        held = set(job_parts(tmp_path))
        hold.unlink()
        assert first.wait(timeout=120) != 0
        log = (tmp_path / "first.log").read_text()
        assert "was taken over by job later" in log and "writes nothing more" in log, log
        assert set(job_parts(tmp_path)) <= held  # not one more part after it was taken
        assert json.loads(lock.read_text())["token"] == "another-job"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def launch_cmd(cmd: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


def test_a_torchrun_restart_resumes_and_fresh_applies_to_the_first_attempt_only(job):
    tmp_path, args = job
    cmd = torchrun_cmd(
        [
            *args,
            "run.fresh=true",
            "fault.rank=1",
            "fault.kind=exit",
            "fault.at_unit=2",
            "fault.attempt=0",
            # rank 0 slow on this attempt, so rank 1 surely claims the units it fails before
            "fault.slow_rank=0",
            "fault.delay_s=0.5",
        ],
        2,
        "--max-restarts=1",
    )
    proc = start(cmd, tmp_path, tmp_path / "torchrun.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "torchrun.log").read_text()
    log = (tmp_path / "torchrun.log").read_text()
    assert "injected exit on rank 1" in log
    assert "applies to a job's first attempt only" in log and "resuming" in log
    assert_complete(tmp_path, N)


def test_a_rank_that_makes_no_progress_is_reported_as_stalled(job):
    tmp_path, args = job
    # rank 1 hangs before its 2nd unit (heartbeats going on); rank 0, slowed to a batch per 2 s,
    # leaves it that unit. A stall of 20 s is no batch of rank 0's, however busy the machine
    # (a 3 s one was), and reported long before run.timeout_s (1800 s).
    hang = ["run.stall_after_s=20", "fault.rank=1", "fault.kind=hang", "fault.at_unit=1"]
    hang += ["fault.slow_rank=0", "fault.delay_s=2"]
    procs = start_ranks([*args, *FAST_LIVENESS, *hang], 2, tmp_path)
    try:
        codes = wait_all(procs, timeout=600)
    finally:
        stop_all(procs)
    logs = [(tmp_path / f"rank{r}.out").read_text() for r in (0, 1)]
    assert codes == [3, 1], logs
    assert "stopping because rank 1 stalled: finished no batch for" in last_line(logs[0], 0)
    assert "rank 1 stalled" in last_line(logs[1], 1)


def test_waiting_for_the_others_has_a_deadline(tmp_path):
    """Rank 0 is done and waits; rank 1 never finishes a batch nor says it is done."""
    import torch.distributed as dist

    from ddpinfer.launch.env import LaunchEnv
    from ddpinfer.launch.liveness import Liveness
    from ddpinfer.launch.stopping import PeerFailed

    port = free_port()
    host = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    env = LaunchEnv(
        launcher="torchrun",
        world_size=2,
        store_addr="127.0.0.1",
        store_port=port,
        store_hosted_by_agent=True,
        local_world_size=2,
    )
    liveness = Liveness(env, heartbeat_s=0.2, dead_after_s=60, stall_after_s=1)
    outcome = []

    def wait() -> None:
        try:
            liveness.wait_all_done(lambda: None)
        except PeerFailed as e:
            outcome.append(str(e))

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert outcome and outcome[0].startswith("rank 1 stalled: finished no batch for"), outcome
    del host


def test_survivors_of_a_failed_rank_name_it_not_a_preemption(job):
    tmp_path, args = job
    fault = ["fault.rank=1", "fault.at_unit=0", "fault.delay_s=0.5"]  # its very first unit
    result = launch([*args, *fault], nproc=3, cwd=tmp_path)
    out = result.stderr + result.stdout
    assert result.returncode != 0, out
    assert "stopped by SIGTERM" not in out, out
    assert "InjectedFault" in last_line(out, 1)
    for rank in (0, 2):
        assert "stopping because rank 1 failed: InjectedFault" in last_line(out, rank), out


@pytest.mark.parametrize("override", ["batch_sz=3", "batch_size=abc"])
def test_hydra_config_errors_exit_2(tmp_path, override):
    result = launch([override], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert override.split("=")[0] in result.stderr


def test_each_node_checks_its_input_copy(tmp_path, bert_embedder):
    port = free_port()
    procs = []
    for node, texts in ((0, TEXTS), (1, [*TEXTS[:-1], "another last line"])):
        (tmp_path / f"node{node}").mkdir()
        write_jsonl(tmp_path / f"node{node}" / "in.jsonl", texts)
        args = [f"model.path={bert_embedder}", "data.path=in.jsonl", "output.path=out.jsonl"]
        cmd = torchrun_cmd(args, 1, *two_node_rendezvous(port, "copies"))
        procs.append(start(cmd, tmp_path / f"node{node}", tmp_path / f"node{node}.log"))
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        stop_all(procs)
    logs = "\n".join((tmp_path / f"node{n}.log").read_text() for n in (0, 1))
    assert codes[0] != 0 and codes[1] != 0, logs
    assert "holds other inputs than rank 0's copy" in logs, logs
    assert not list(tmp_path.glob("node*/out.jsonl"))


def test_a_node_lost_during_the_part_transfer_is_noticed(job):
    """Rank 1 freezes (SIGSTOP: silent, its connections still open, as a lost node) where it
    would send its parts to rank 0. Rank 0 used to wait in the transfer for run.timeout_s."""
    tmp_path, args = job
    lost = ["output.shared_fs=false", "fault.rank=1", "fault.kind=freeze", "fault.at_finish=true"]
    procs = start_ranks([*args, *FAST_LIVENESS, *lost], 2, tmp_path)
    try:
        assert procs[0].wait(timeout=600) == 3
    finally:
        stop_all(procs)
    log = (tmp_path / "rank0.out").read_text()
    assert "rank 1 stopped responding" in last_line(log, 0), log
    assert not (tmp_path / "out.jsonl").exists()
