"""Why a rank stops early, the exit code each reason gets, and the signals that ask for it.

Exit codes: 0 done; 1 an unexpected error (a traceback follows) or this rank stalled; 2 bad
input or configuration (the message says what to fix); 3 another rank failed, stalled or died
(that rank is named); 75 (EX_TEMPFAIL) stopped by
SIGTERM/SIGUSR1 (preemption, a SLURM time limit) with finished work kept: run again to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_UNEXPECTED = 1
EXIT_USER_ERROR = 2
EXIT_PEER_FAILED = 3
EXIT_PREEMPTED = 75


def config_errors_exit_2(hydra_main: Callable[[], None]) -> None:
    """Run the ``@hydra.main`` function so that Hydra's own configuration errors (a key that is
    not in the schema, a value of the wrong type, a malformed override) exit 2, like ddpinfer's,
    instead of Hydra's 1. Any SystemExit(1) here is Hydra's: once Hydra calls the task function,
    ``runner.main`` ends the process itself with its own exit code (except under ``-m``, where
    a failed job raises and Hydra's SystemExit(1) for it exits 2 as well)."""
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1:
            raise SystemExit(EXIT_USER_ERROR) from None
        raise


def in_hydra_sweep() -> bool:
    """Started by `-m` (Hydra's multirun: a launcher plugin such as submitit_slurm runs this
    job and collects its outcome from runner.main's return or exception)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def end_sweep_job(code: int) -> None:
    """Hand the outcome to the launcher: return on success; on preemption leave without a
    result (the scheduler requeues the job, which resumes); on failure raise, so the sweep
    reports it."""
    if code == EXIT_PREEMPTED:
        raise SystemExit(code)
    if code:
        raise RuntimeError(f"ddpinfer stopped with exit code {code}; the reason is printed above")


class PeerFailed(RuntimeError):
    """Another rank failed or stopped responding; this rank stops too."""

    def __init__(self, message: str, preempted: bool = False) -> None:
        super().__init__(message)
        self.preempted = preempted


class Stalled(RuntimeError):
    """This rank finished no batch for run.stall_after_s; the others were told."""


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
