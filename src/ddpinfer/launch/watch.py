"""Everything that can stop this rank, checked in one place: stop signals, rank 0's hold on the
run directory's lock, other ranks' failure notices and this rank's own stall clock, and the lock
fence every write into the run directory goes through."""

from __future__ import annotations

from pathlib import Path

from ddpinfer.config import RunConfig
from ddpinfer.launch.liveness import Liveness
from ddpinfer.launch.run_lock import LOCK_NAME, LockFence, RunLock
from ddpinfer.launch.stopping import StopSignals


class Watch:
    def __init__(
        self,
        signals: StopSignals,
        lock: RunLock | None,
        token: str | None,
        run_dir: Path,
        run: RunConfig,
    ) -> None:
        self.signals = signals
        self.lock = lock
        self.liveness: Liveness | None = None
        self._fence = LockFence(None, None)
        self._lock_path = run_dir / LOCK_NAME
        self._token = token
        self._lease = (run.heartbeat_s, run.dead_after_s)

    def guard_writes(self, sees_run_dir: bool) -> None:
        """From now on ``fence`` refuses writes once the lock no longer names this job (only
        where this rank sees rank 0's run directory and its lock)."""
        self._fence = LockFence.guarding(self._lock_path, self._token, sees_run_dir, *self._lease)

    def fence(self) -> None:
        """Right before a write into the run directory becomes visible: raise ``LostRunLock``
        if the job lost it (``LockFence``)."""
        self._fence.check()

    def check_stop(self) -> None:
        """Raise the reason to stop, if there is one (between batches, and while waiting)."""
        if self.lock is not None:
            self.lock.check()
        liveness = self.liveness
        if liveness is not None:
            if self.signals.received:  # torchrun's agent stops the others when a rank fails
                liveness.explain_signal()
                if liveness.failure_kind is not None and liveness.failure_kind.is_stop:
                    self.signals.check()  # a signal to all (a preemption, Ctrl-C): this one's
            liveness.check()
        self.signals.check()
        self._fence.check()

    def start_work(self) -> None:
        """The inference loop starts: the stall clock runs from here to the last batch, and a
        stop signal waits for the batch in flight."""
        self.phase("work")
        self.signals.work_started()
        if self.liveness is not None:
            self.liveness.progress()

    def before_batch(self) -> None:
        """The previous batch (if any) has finished: that is progress; then ``check_stop``."""
        if self.liveness is not None:
            self.liveness.progress()
        self.check_stop()

    def phase(self, name: str) -> None:
        if self.liveness is not None:
            self.liveness.phase(name)
