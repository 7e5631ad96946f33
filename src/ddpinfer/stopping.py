"""Why a rank stops early, the exit code each reason gets, and the signals that ask for it.

Exit codes: 0 done; 1 an unexpected error (a traceback follows); 2 bad input or configuration
(the message says what to fix); 3 another rank failed or died; 75 (EX_TEMPFAIL) stopped by
SIGTERM/SIGUSR1 (preemption, a SLURM time limit) with finished work kept: run again to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_PEER_FAILED = 3
EXIT_PREEMPTED = 75


class PeerFailed(RuntimeError):
    """Another rank failed or stopped responding; this rank stops too."""

    def __init__(self, message: str, preempted: bool = False) -> None:
        super().__init__(message)
        self.preempted = preempted


class Preempted(RuntimeError):
    """A stop signal arrived; finished work is kept and a re-run resumes."""


class StopSignals:
    """SIGTERM and SIGUSR1 ask the run to stop at the next batch boundary; a second signal,
    later, stops the process at once (finished units are on disk either way)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    # A launcher often passes a signal on that the process also got directly (torchrun under
    # SLURM): a repeat this soon is the same request, not an insistence.
    REPEAT_WINDOW_S = 5.0

    def __init__(self) -> None:
        self.received: str | None = None
        self._received_at = 0.0

    def install(self) -> StopSignals:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._received_at > self.REPEAT_WINDOW_S:
                os._exit(EXIT_PREEMPTED)
            return
        self.received, self._received_at = name, time.monotonic()
        log.warning("%s received: stopping after the current batch; finished work is kept", name)

    def check(self) -> None:
        if self.received is not None:
            raise Preempted(f"stopped by {self.received}")
