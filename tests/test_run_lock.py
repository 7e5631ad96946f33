"""One job per run directory: the lock file, its take-over rules, the fence that stops a job
that lost it, and unique temporary names. Unit tests here; two real jobs on one directory in
test_job_safety.py."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ddpinfer.launch import run_lock
from ddpinfer.launch.run_lock import (
    LOCK_NAME,
    LockFence,
    LostRunLock,
    Owner,
    RunDirLocked,
    RunLock,
    read_owner,
)
from ddpinfer.rundir.atomic import atomic_path


def lock(run_dir, job="job-2", host="here", stale_after_s=60.0, attempt=0):
    return RunLock(
        run_dir, job, host, heartbeat_s=0.1, stale_after_s=stale_after_s, attempt=attempt
    )


def here():
    """What a lock taken in this host's boot and PID namespace records besides its pid."""
    mine = lock(Path(".")).owner
    return {"host": "here", "boot_id": mine.boot_id, "pid_ns": mine.pid_ns}


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
    # heartbeats every 0.1 s: stale after 2 s is 20 missed beats, a margin for a busy machine
    held = lock(tmp_path, stale_after_s=2.0).acquire()
    time.sleep(2.5)
    with pytest.raises(RunDirLocked):  # older than stale_after_s, but renewed meanwhile
        lock(tmp_path, job="other", host="other-host", stale_after_s=2.0).acquire()
    held.release()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    write_lock(tmp_path, pid=int(dead), **here())
    taken = lock(tmp_path).acquire()
    assert "no longer runs" in taken.took_over
    taken.release()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    write_lock(tmp_path, pid=os.getpid(), **here())
    with pytest.raises(RunDirLocked, match="job job-1"):
        lock(tmp_path).acquire()


def test_a_missing_pid_of_another_pid_namespace_says_nothing(tmp_path):
    # A container with host networking: same host name, its own PIDs. Only the heartbeat counts.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    write_lock(tmp_path, pid=int(dead), **{**here(), "pid_ns": "pid:[1]"})
    with pytest.raises(RunDirLocked, match="job job-1"):
        lock(tmp_path).acquire()


def test_a_lock_with_a_stale_heartbeat_is_taken_over(tmp_path):
    write_lock(tmp_path, heartbeat=time.time() - 120)
    taken = lock(tmp_path).acquire()
    assert "has not renewed it for 120s" in taken.took_over
    taken.release()


def test_an_earlier_attempt_of_the_same_job_is_taken_over_not_a_twin(tmp_path):
    # fresh, elsewhere: the first attempt of a job now requeued on another node
    write_lock(tmp_path, job="job-2", attempt=0)
    with pytest.raises(RunDirLocked):  # the same key and attempt: another live job (two sruns)
        lock(tmp_path, job="job-2", attempt=0).acquire()
    taken = lock(tmp_path, job="job-2", attempt=1).acquire()
    assert "earlier attempt of this job" in taken.took_over
    taken.release()


def test_a_job_whose_lock_is_taken_over_stops_and_its_fence_refuses_writes(tmp_path):
    held = lock(tmp_path).acquire()
    fence = LockFence(tmp_path / LOCK_NAME, held.token, heartbeat_s=0.0, stale_after_s=60)
    fence.check()
    write_lock(tmp_path, token="someone-else", job="job-9")  # taken over while this job froze
    with pytest.raises(LostRunLock, match="taken over by job job-9"):
        fence.check()
    deadline = time.monotonic() + 120  # the next heartbeat notices; a busy machine's is late
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LostRunLock, match="writes nothing more"):
        held.check()
    held.release()
    assert Owner.read(tmp_path / LOCK_NAME).token == "someone-else"  # not ours to remove


def test_temporary_names_are_unique_in_one_process(tmp_path):
    target = tmp_path / "out.jsonl"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b  # PID-based names were equal here, and across containers
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() in ("a", "b")


def test_the_fence_reads_the_lock_once_per_heartbeat_and_keeps_a_lease(tmp_path):
    """Between reads the fence answers from memory: safe, because a lock is taken over only
    once its heartbeat is older than stale_after_s, and the fence lets a write through only
    while the heartbeat it last saw is younger than stale_after_s - heartbeat_s."""
    write_lock(tmp_path, token="mine")
    fence = LockFence(tmp_path / LOCK_NAME, "mine", heartbeat_s=3600, stale_after_s=7200)
    for _ in range(100):
        fence.check()
    assert fence.reads == 1
    # frozen past its lease (a heartbeat 100 s old, seen now): the fence reads the lock again
    # and waits for a renewal; here, another job took the lock over meanwhile
    write_lock(tmp_path, token="mine", heartbeat=time.time() - 100)
    fence = LockFence(tmp_path / LOCK_NAME, "mine", heartbeat_s=3600, stale_after_s=60)
    fence._read()
    write_lock(tmp_path, token="other", job="job-7")
    with pytest.raises(LostRunLock, match="taken over by job job-7"):
        fence.check()


def test_a_fence_past_its_lease_waits_for_the_renewal(tmp_path):
    write_lock(tmp_path, token="mine", heartbeat=time.time() - 100)
    fence = LockFence(tmp_path / LOCK_NAME, "mine", heartbeat_s=0.05, stale_after_s=60)
    renewer = threading.Thread(
        target=lambda: (fence_waits.wait(60), write_lock(tmp_path, token="mine"))
    )
    fence_waits = threading.Event()
    reads = fence._read

    def counting_read():
        reads()
        if fence.reads >= 2:  # the fence is waiting: its holder's heartbeat comes now
            fence_waits.set()

    fence._read = counting_read
    renewer.start()
    fence.check()  # returns once the lock is renewed
    renewer.join()
    assert fence.reads >= 2


def test_a_lock_that_cannot_be_read_for_a_moment_is_not_a_lost_lock(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("{")  # half visible, as a shared filesystem can show a write for a moment
    failed = threading.Event()

    def repair():
        failed.wait(60)
        write_lock(tmp_path / "new", token="mine")
        os.replace(tmp_path / "new" / LOCK_NAME, path)

    repairer = threading.Thread(target=repair)
    repairer.start()
    seen = []
    original = run_lock.log.debug

    def noticing(message, *args):
        seen.append(message % args)
        failed.set()
        original(message, *args)

    run_lock.log.debug = noticing
    try:
        assert read_owner(path).token == "mine"
    finally:
        run_lock.log.debug = original
        failed.set()
        repairer.join()
    assert seen and "trying again" in seen[0]
