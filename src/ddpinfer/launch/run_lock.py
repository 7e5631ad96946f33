"""One job at a time in a run directory: a lock file naming its owner, kept fresh by a heartbeat.

Rank 0 takes the lock before anything in the run directory changes, and holds it to the end. A
second job on the same directory (a double ``sbatch``, a retry while the first still runs) stops
at once with a message naming the running job, instead of computing everything twice or, with
``run.fresh=true``, deleting the parts the first one is writing.

The owner is a random token written at start: two live jobs never share it, whatever their
launcher says (``torchrun --master_port`` gives every job the run id ``none``). A lock whose owner
is gone is taken over: its heartbeat is older than ``stale_after_s``; or it was taken by an
earlier attempt of this same job (a torchrun restart or a SLURM requeue: the same job key, a
lower attempt number); or its process no longer exists, which is only asked where the question
means something: the same host, boot and PID namespace (a container with host networking has
its own PIDs, and a PID missing there says nothing).

A job that finds its lock taken over stops at once (``check``), and every rank's writes go
through a ``LockFence`` that refuses them from then on. Taking over a stale lock is best effort
on a shared filesystem: two jobs that find the same stale lock in the same instant both delete
it and race to create it; the re-read after writing makes the loser stop, except in a window of
milliseconds.
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

from ddpinfer.config import RunConfig
from ddpinfer.errors import UserError
from ddpinfer.launch.env import LaunchEnv
from ddpinfer.rundir.atomic import atomic_text
from ddpinfer.rundir.store import sweep_run_dir

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunDirLocked(UserError):
    """Another job that is still running holds the run directory."""


class LostRunLock(UserError):
    """This job's lock on the run directory was taken over: it must stop and write nothing."""


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    token: str
    job: str | None
    host: str
    pid: int
    heartbeat: float
    """Wall-clock time of the owner's last heartbeat (comparable across hosts with NTP)."""
    attempt: int = 0
    boot_id: str | None = None
    pid_ns: str | None = None
    """Where ``pid`` means something: the host's boot and the PID namespace it was read in."""

    def describe(self) -> str:
        who = f"job {self.job}, " if self.job else ""
        return f"{who}pid {self.pid} on {self.host}"

    @staticmethod
    def read(path: Path) -> Owner | None:
        """The owner written in ``path``; None when there is none or it cannot be read."""
        try:
            return Owner(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class LockFence:
    """What every rank checks before it writes into the run directory: that the lock still
    names this job's token, as a lease. A no-op where the run directory is not rank 0's (no
    shared filesystem), and in a world without a lock.

    The lock is read at most once per ``heartbeat_s`` (from memory in between: a thousand ranks
    do not open ``run.lock`` every batch), and a read that fails for a moment (a shared
    filesystem's hiccup) is retried, never taken for a lost lock. What makes a check from memory
    safe is the lease: another job takes the lock over only once its heartbeat is older than
    ``stale_after_s``, so a write is let through only while the heartbeat last seen is younger
    than ``stale_after_s - heartbeat_s``. Past that (this process was frozen, or rank 0's
    heartbeat is late), the check reads the lock again and waits for a renewal, and a lock taken
    over meanwhile stops the write. Writers call the check after a write is prepared, right
    before it is made visible (the rename of a part, the append of a journal record): a job
    frozen between its check and that system call, past the lease, is the one window left, as
    with every lease-based lock."""

    def __init__(
        self,
        path: Path | None,
        token: str | None,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 60.0,
    ) -> None:
        self.path = path
        self.token = token
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._seen: Owner | None = None
        self._read_at = -float("inf")
        """``time.monotonic()`` of the last read."""
        self.reads = 0

    @classmethod
    def guarding(
        cls,
        path: Path,
        token: str | None,
        sees_run_dir: bool,
        heartbeat_s: float = 5.0,
        stale_after_s: float = 60.0,
    ) -> LockFence:
        """The fence of a rank: on where it sees rank 0's run directory, found by the probe,
        or, where no probe ran (output.shared_fs=false), by the lock naming this job: rank 0's
        node-mates write into rank 0's run directory whatever the setting says."""
        if not sees_run_dir:
            holder = read_owner(path)
            if holder is None or holder.token != token:
                return cls(None, token)
        return cls(path, token, heartbeat_s, stale_after_s)

    def check(self) -> None:
        """Raise ``LostRunLock`` unless the lock names this job and its lease holds."""
        if self.path is None or self.token is None:
            return
        if time.monotonic() - self._read_at >= self.heartbeat_s:
            self._read()
        waited_since = None
        while not self._lease_holds():
            if waited_since is None:
                waited_since = time.monotonic()
            elif time.monotonic() - waited_since > self.stale_after_s:
                raise lost_lock(self.path, self._seen, renewed=False)
            time.sleep(min(0.1, self.heartbeat_s))
            self._read()

    def _lease_holds(self) -> bool:
        holder = self._seen
        if holder is None or holder.token != self.token:
            raise lost_lock(self.path, holder)  # type: ignore[arg-type]
        return time.time() - holder.heartbeat < self.stale_after_s - self.heartbeat_s

    def _read(self) -> None:
        self._seen = read_owner(self.path)  # type: ignore[arg-type]
        self._read_at = time.monotonic()
        self.reads += 1


def read_owner(path: Path, retry_for_s: float = 30.0) -> Owner | None:
    """The lock's owner, None when there is no lock file. Any other failure to read it (a shared
    filesystem's transient error, a half-visible write) is retried for ``retry_for_s`` before
    it is raised: a read error never counts as a lost lock."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.05
    while True:
        try:
            return Owner(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            if time.monotonic() > deadline:
                raise OSError(f"cannot read the run directory's lock {path}: {e}") from e
            log.debug("reading %s failed (%s); trying again", path, e)
            time.sleep(delay)
            delay = min(2 * delay, 1.0)


def lost_lock(path: Path, holder: Owner | None, renewed: bool = True) -> LostRunLock:
    if holder is None:
        who = "removed"
    elif renewed:
        who = f"taken over by {holder.describe()}"
    else:
        who = f"not renewed by its holder ({holder.describe()}) for run.dead_after_s"
    return LostRunLock(
        f"the run directory's lock {path} was {who}: this job no longer owns "
        f"{path.parent}, so it stops and writes nothing more (what it finished is kept). HINT: "
        "a lock is taken over when its heartbeat is older than run.dead_after_s: a job frozen "
        "for that long (SIGSTOP, a suspended VM) loses it; run the same command again once the "
        "other job has ended."
    )


class RunLock:
    def __init__(
        self,
        run_dir: Path,
        job: str | None,
        host: str,
        heartbeat_s: float,
        stale_after_s: float,
        attempt: int = 0,
    ) -> None:
        self.path = run_dir / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.owner = Owner(
            token=uuid.uuid4().hex,
            job=job,
            host=host,
            pid=os.getpid(),
            heartbeat=time.time(),
            attempt=attempt,
            boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
            pid_ns=_pid_namespace(),
        )
        self.took_over: str | None = None
        """Why the lock of a job that is gone was taken over, if it was (logged by the caller:
        the lock is taken before logging is set up)."""
        self.lost: LostRunLock | None = None
        """Set by the heartbeat when another job has taken the lock over."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ddpinfer-run-lock", daemon=True)

    @property
    def token(self) -> str:
        return self.owner.token

    def acquire(self) -> RunLock:
        """Take the lock, or raise ``RunDirLocked`` naming the job that holds it. Temporary
        files left in the run directory by a writer that died are swept once it is ours."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = Owner.read(self.path)
            reason = self._gone(holder)
            if reason is None:
                raise self._locked(holder)
            self.took_over = f"took over {self.path}: {reason}"
            if Owner.read(self.path) == holder:  # not taken over by someone else meanwhile
                self.path.unlink(missing_ok=True)
            if not self._create():
                raise self._locked(Owner.read(self.path))
        time.sleep(0.05)  # let a racing taker's write land, then check that we won
        holder = Owner.read(self.path)
        if holder is None or holder.token != self.owner.token:
            raise self._locked(holder)
        sweep_run_dir(self.path.parent)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise ``LostRunLock`` if another job has taken the lock over."""
        if self.lost is not None:
            raise self.lost

    def abandon(self) -> None:
        """Stop the heartbeat and leave the lock file: this job lost contact with its other
        ranks, which may still be journaling their last batch under it. The next attempt takes
        it over (its process is gone, or its heartbeat is older than run.dead_after_s)."""
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_s + 5)
        holder = Owner.read(self.path)
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

    def _gone(self, holder: Owner | None) -> str | None:
        """Why the holder no longer runs, or None if it may still run."""
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it was just released"
            return f"it is unreadable and {age:.0f}s old" if age > self.stale_after_s else None
        mine = self.owner
        if mine.job is not None and holder.job == mine.job and holder.attempt < mine.attempt:
            return f"it was taken by an earlier attempt of this job ({holder.describe()})"
        same_pids = (holder.host, holder.boot_id, holder.pid_ns) == (
            mine.host,
            mine.boot_id,
            mine.pid_ns,
        )
        if same_pids and holder.pid_ns is not None and not _pid_alive(holder.pid):
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
            f"run.name=<name> or output.path. A lock whose heartbeat is older than "
            f"run.dead_after_s ({self.stale_after_s:.0f}s) is taken over; {self.path} can also "
            f"be deleted by hand once that job is gone."
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = read_owner(self.path)
            except OSError as e:  # still unreadable after retries: try again at the next beat
                log.warning("%s", e)
                continue
            if holder is None or holder.token != self.owner.token:
                self.lost = lost_lock(self.path, holder)
                log.error("%s", self.lost)
                return
            try:
                with atomic_text(self.path) as f:
                    json.dump(asdict(Owner(**{**asdict(self.owner), "heartbeat": time.time()})), f)
            except OSError as e:
                log.warning("could not renew the run lock %s: %s", self.path, e)


def take_run_lock(run_dir: Path, env: LaunchEnv, run: RunConfig) -> RunLock:
    """Rank 0's lock on ``run_dir``, renewed every run.heartbeat_s, stale after run.dead_after_s."""
    return RunLock(
        run_dir, env.job_key, env.host, run.heartbeat_s, run.dead_after_s, env.attempt
    ).acquire()
