"""One job per run directory (issue 8, case 4): the lock file, its take-over rules, and unique
temporary names. Unit tests here; two real jobs on one directory in test_job_safety.py."""

import json
import os
import subprocess
import sys
import time

import pytest

from ddpinfer.atomic import atomic_path
from ddpinfer.launch.run_lock import LOCK_NAME, RunDirLocked, RunLock


def lock(run_dir, job="job-2", host="here", stale_after_s=60.0):
    return RunLock(run_dir, job, host, heartbeat_s=0.1, stale_after_s=stale_after_s)


def write_lock(run_dir, **fields):
    owner = {"token": "t", "job": "job-1", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    owner.update(fields)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(owner))


def test_a_second_job_is_refused_naming_the_first(tmp_path):
    first = lock(tmp_path, job="111").acquire()
    with pytest.raises(RunDirLocked, match=r"in use by job 111, pid \d+ on here.*HINT: wait"):
        lock(tmp_path, job="222").acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    lock(tmp_path, job="222").acquire().release()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
    held = lock(tmp_path, stale_after_s=0.5).acquire()
    time.sleep(1.0)
    with pytest.raises(RunDirLocked):  # older than stale_after_s, but renewed meanwhile
        lock(tmp_path, job="other", host="other-host", stale_after_s=0.5).acquire()
    held.release()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    write_lock(tmp_path, host="here", pid=int(dead))
    taken = lock(tmp_path).acquire()
    assert "no longer runs" in taken.took_over
    taken.release()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    write_lock(tmp_path, host="here", pid=os.getpid())
    with pytest.raises(RunDirLocked, match="job job-1"):
        lock(tmp_path).acquire()


def test_a_lock_with_a_stale_heartbeat_is_taken_over(tmp_path):
    write_lock(tmp_path, heartbeat=time.time() - 120)
    taken = lock(tmp_path).acquire()
    assert "has not renewed it for 120s" in taken.took_over
    taken.release()


def test_an_earlier_attempt_of_the_same_job_is_taken_over(tmp_path):
    write_lock(tmp_path, job="job-2")  # fresh, elsewhere: a requeued job on another node
    lock(tmp_path, job="job-2").acquire().release()


def test_temporary_names_are_unique_in_one_process(tmp_path):
    target = tmp_path / "out.jsonl"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b  # PID-based names were equal here, and across containers
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() in ("a", "b")
