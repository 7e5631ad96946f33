"""One job at a time in a run directory: a lock file naming its owner, kept fresh by a heartbeat.

Rank 0 takes the lock before anything in the run directory changes, and holds it to the end. A
second job on the same directory (a double ``sbatch``, a retry while the first still runs) stops
at once with a message naming the running job, instead of computing everything twice or, with
``run.fresh=true``, deleting the parts the first one is writing. A lock whose owner is gone is
taken over: its heartbeat is older than ``stale_after_s``, or it was written on this host by a
process that no longer exists, or by an earlier attempt of this same job (a torchrun restart or a
SLURM requeue, which keep the job's id).

Taking over a stale lock is best effort on a shared filesystem: two jobs that find the same stale
lock in the same instant both delete it and race to create it; the re-read after writing makes
the loser stop, except in a window of milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ddpinfer.atomic import atomic_text
from ddpinfer.config import RunConfig
from ddpinfer.errors import UserError
from ddpinfer.launch.env import LaunchEnv

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunDirLocked(UserError):
    """Another job that is still running holds the run directory."""


@dataclass(frozen=True)
class Owner:
    token: str
    job: str | None
    host: str
    pid: int
    heartbeat: float
    """Wall-clock time of the owner's last heartbeat (comparable across hosts with NTP)."""

    def describe(self) -> str:
        who = f"job {self.job}, " if self.job else ""
        return f"{who}pid {self.pid} on {self.host}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class RunLock:
    def __init__(
        self, run_dir: Path, job: str | None, host: str, heartbeat_s: float, stale_after_s: float
    ) -> None:
        self.path = run_dir / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner = Owner(uuid.uuid4().hex, job, host, os.getpid(), time.time())
        self.took_over: str | None = None
        """Why the lock of a job that is gone was taken over, if it was (logged by the caller:
        the lock is taken before logging is set up)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ddpinfer-run-lock", daemon=True)

    def acquire(self) -> RunLock:
        """Take the lock, or raise ``RunDirLocked`` naming the job that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = self._read()
            reason = self._gone(holder)
            if reason is None:
                raise self._locked(holder)
            self.took_over = f"took over {self.path}: {reason}"
            if self._read() == holder:  # not taken over by someone else meanwhile
                self.path.unlink(missing_ok=True)
            if not self._create():
                raise self._locked(self._read())
        time.sleep(0.05)  # let a racing taker's write land, then check that we won
        holder = self._read()
        if holder is None or holder.token != self.owner.token:
            raise self._locked(holder)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_s + 5)
        holder = self._read()
        if holder is not None and holder.token == self.owner.token:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self.owner), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> Owner | None:
        """The lock's owner; None when there is no lock or it cannot be read (half written)."""
        try:
            return Owner(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _gone(self, holder: Owner | None) -> str | None:
        """Why the holder no longer runs, or None if it may still run."""
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it was just released"
            return f"it is unreadable and {age:.0f}s old" if age > self.stale_after_s else None
        if self.owner.job is not None and holder.job == self.owner.job:
            return f"it was taken by an earlier attempt of this job ({holder.describe()})"
        if holder.host == self.owner.host and not _pid_alive(holder.pid):
            return f"its owner ({holder.describe()}) no longer runs"
        age = time.time() - holder.heartbeat
        if age > self.stale_after_s:
            return f"its owner ({holder.describe()}) has not renewed it for {age:.0f}s"
        return None

    def _locked(self, holder: Owner | None) -> RunDirLocked:
        who = holder.describe() if holder else "another job (its lock file is being written)"
        return RunDirLocked(
            f"run directory {self.path.parent} is in use by {who}: two jobs in one run "
            f"directory would compute the same work twice or delete each other's results. "
            f"HINT: wait for that job to end (or cancel it); to run both, give this one its own "
            f"run.name=<name> or output.path. A lock left by a job that is gone is taken over "
            f"by itself after run.dead_after_s; {self.path} can also be deleted by hand."
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if holder is not None and holder.token != self.owner.token:
                log.error(
                    "%s was taken over by %s; this job no longer holds it",
                    self.path,
                    holder.describe(),
                )
                return
            try:
                with atomic_text(self.path) as f:
                    json.dump(asdict(Owner(**{**asdict(self.owner), "heartbeat": time.time()})), f)
            except OSError as e:
                log.warning("could not renew the run lock %s: %s", self.path, e)


def take_run_lock(run_dir: Path, env: LaunchEnv, run: RunConfig) -> RunLock:
    """Rank 0's lock on ``run_dir``, renewed every run.heartbeat_s, stale after run.dead_after_s."""
    return RunLock(run_dir, env.job_key, env.host, run.heartbeat_s, run.dead_after_s).acquire()
