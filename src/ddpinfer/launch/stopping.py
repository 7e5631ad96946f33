"""Why a rank stops early, the exit code each reason gets, and the signals that ask for it.

Exit codes: 0 done; 1 an unexpected error (a traceback follows) or this rank stalled; 2 bad
input or configuration (the message says what to fix); 3 another rank failed, stalled or died
(that rank is named); 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGUSR1 (preemption, a SLURM time
limit) with finished work kept: run again to resume; 130 stopped by Ctrl-C (SIGINT), the same
way.
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
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


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
    if code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
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

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_PREEMPTED


class StopSignals:
    """SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) ask the run to stop. While batches run, at the next
    batch boundary, so that the batch in flight is kept; before that (the preflight, loading
    the model) there is no finished work to keep: at once. A second signal, later, stops the
    process at once (finished batches are on disk either way)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    # A launcher often passes a signal on that the process also got directly (torchrun under
    # SLURM, or Ctrl-C reaching torchrun and its workers alike): a repeat this soon is the same
    # request, not an insistence.
    REPEAT_WINDOW_S = 5.0

    def __init__(self) -> None:
        self.received: str | None = None
        self._received_at = 0.0
        self._at_batch_boundary = False

    def install(self) -> StopSignals:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def work_started(self) -> None:
        """From now on a stop waits for the batch in flight (it is kept)."""
        self._at_batch_boundary = True

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._received_at > self.REPEAT_WINDOW_S:
                os._exit(EXIT_INTERRUPTED if name == "SIGINT" else EXIT_PREEMPTED)
            return
        self.received, self._received_at = name, time.monotonic()
        if not self._at_batch_boundary:
            raise Preempted(name)  # interrupts the main thread now: nothing finished to lose
        log.warning("%s received: stopping after the current batch; finished work is kept", name)

    def check(self) -> None:
        if self.received is not None:
            raise Preempted(self.received)
