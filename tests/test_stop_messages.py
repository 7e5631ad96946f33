"""What the ranks say when torchrun is the one stopping them: after a worker's kill -9 its agent
sends SIGTERM to the survivors (before run.dead_after_s can pass), and after the agent itself is
killed the store it hosted is gone. Neither is a preemption nor an unexpected error. Real
torchrun runs on CPU."""

import os
import re
import signal
import subprocess

import pytest
from helpers import job_parts, subprocess_env, torchrun_cmd, wait_for

pytestmark = pytest.mark.slow

N = 48


def last_lines(text: str) -> dict[int, str]:
    """Each rank's last ``ddpinfer: rank R: ...`` line."""
    lines = {}
    for line in text.splitlines():
        if m := re.match(r"ddpinfer: rank (\d+): ", line):
            lines[int(m.group(1))] = line
    return lines


def pid_of(tmp_path, rank: int) -> int:
    log = (tmp_path / "runs" / "job" / "logs" / f"rank{rank}.log").read_text()
    return int(re.search(r"pid (\d+), torchrun launch", log).group(1))


def kill_session(proc: subprocess.Popen) -> None:
    """Whatever is left of the run (the agent, orphaned workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_torchrun(tmp_path, args) -> subprocess.Popen:
    with open(tmp_path / "torchrun.log", "w") as out:
        return subprocess.Popen(
            torchrun_cmd([*args, "fault.delay_s=0.5", "log.level=DEBUG"], 2), cwd=tmp_path,
            env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_survivor_of_a_kill_9_under_torchrun_names_the_dead_rank(job):
    tmp_path, args = job
    proc = start_torchrun(tmp_path, args)  # run.dead_after_s stays 60 s: torchrun is faster
    try:
        wait_for(lambda: len(job_parts(tmp_path)) >= 1, timeout=240)
        os.kill(pid_of(tmp_path, 1), signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        kill_session(proc)
    out = (tmp_path / "torchrun.log").read_text()
    line = last_lines(out)[0]
    assert "stopping because rank 1 stopped responding: its process" in line, out
    assert "stopped by SIGTERM" not in line, out
    assert re.search(r"exitcode\s*:\s*3 \(pid", out), out  # torchrun's summary of rank 0


def test_ranks_whose_torchrun_agent_is_killed_say_they_lost_the_store(job):
    """With heartbeats far apart, the main thread's next store call (claiming work, publishing
    its rate) is the first to find the store gone: it used to end as an unexpected error."""
    tmp_path, args = job
    proc = start_torchrun(tmp_path, [*args, "run.heartbeat_s=30", "run.dead_after_s=120"])
    try:
        wait_for(lambda: len(job_parts(tmp_path)) >= 1, timeout=240)
        proc.send_signal(signal.SIGKILL)  # the agent alone: its workers live on, orphaned
        proc.wait(timeout=30)
        log = tmp_path / "torchrun.log"  # the orphans still write their stderr there
        wait_for(lambda: len(last_lines(log.read_text())) == 2, timeout=120)
    finally:
        kill_session(proc)
    out = (tmp_path / "torchrun.log").read_text()
    for rank, line in last_lines(out).items():
        assert "lost contact with the rendezvous store" in line, (rank, out)
    assert "unexpected error" not in out and "was removed" not in out, out
