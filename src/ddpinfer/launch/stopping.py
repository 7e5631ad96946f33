"""How a process ends: why (``Reason``), with which exit code and last line (``ending``), and
the signals that ask it to stop.

Exit codes: 0 done; 1 an unexpected error (a traceback follows) or this rank stalled; 2 bad
input or configuration (the message says what to fix); 3 another rank failed, stalled or died
(that rank is named), or the launcher hosting the rendezvous store is gone; 75 (EX_TEMPFAIL)
stopped by SIGTERM/SIGUSR1 (preemption, a SLURM time limit), by this rank's signal or another
rank's, with finished work kept: run again to resume; 130 stopped by Ctrl-C (SIGINT), the same
way.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ddpinfer.errors import UserError

log = logging.getLogger(__name__)

EXIT_DONE = 0
EXIT_UNEXPECTED = 1
EXIT_USER_ERROR = 2
EXIT_PEER_FAILED = 3
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class Reason(enum.Enum):
    """Why a rank stops early. A failure notice in the rendezvous store carries the value of
    the failed rank's reason; every other rank then ends with ``PeerFailed(reason=...)``."""

    ERROR = "error"
    """It raised: an unexpected error, or a problem the user must fix."""
    STALLED = "stalled"
    """Alive, but it finished no batch for run.stall_after_s, or never reached a collective."""
    DEAD = "dead"
    """Silent for run.dead_after_s, or its process is gone (only ever said of another rank)."""
    PREEMPTED = "preempted"
    """SIGTERM or SIGUSR1 (a scheduler's preemption or time limit), or a launcher ending it."""
    INTERRUPTED = "interrupted"
    """SIGINT (Ctrl-C)."""
    LOST_STORE = "lost_store"
    """The rendezvous store is gone: rank 0, or the torchrun agent that hosted it, has stopped."""

    @classmethod
    def of_notice(cls, value: object) -> Reason:
        try:
            return cls(value)
        except ValueError:
            return cls.ERROR

    @property
    def is_stop(self) -> bool:
        """A stop asked for from outside (a signal), not a failure: finished work waits for
        the batches in flight, and the exit code says "run again"."""
        return self in (Reason.PREEMPTED, Reason.INTERRUPTED)


class PeerFailed(RuntimeError):
    """Another rank failed, stopped responding or was stopped, or the store is gone; this rank
    stops too."""

    def __init__(self, message: str, reason: Reason = Reason.ERROR) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def preempted(self) -> bool:
        return self.reason.is_stop


class Stalled(RuntimeError):
    """This rank finished no batch for run.stall_after_s; the others were told."""


class Preempted(RuntimeError):
    """A stop signal arrived; finished work is kept and a re-run resumes."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name

    @property
    def reason(self) -> Reason:
        return Reason.INTERRUPTED if self.signal_name == "SIGINT" else Reason.PREEMPTED

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_PREEMPTED


@dataclass(frozen=True)
class Ending:
    """How this process ends: its exit code, its last line on stderr (after ``rank N: ``), and
    whether the traceback goes first."""

    code: int
    line: str
    traceback: bool = False


def ending(error: BaseException | None) -> Ending:
    """The one place that decides how a process ends, for every reason it can end:

    ========================================  ====  ==========================================
    what ended it                             code  last line
    ========================================  ====  ==========================================
    nothing: the run is done                  0     (none)
    ``UserError``: bad input or config        2     ``error: <what to fix>``
    ``Preempted``: SIGTERM / SIGUSR1          75    ``stopped by SIGTERM; finished work is kept``
    ``Preempted``: SIGINT (Ctrl-C)            130   the same
    ``PeerFailed``, another rank stopped      75    ``stopping because rank N was stopped ...``
    ``PeerFailed``, failed/stalled/dead       3     ``stopping because rank N failed: ...``
    ``PeerFailed``, lost the store            3     ``stopping because lost contact with ...``
    ``Stalled``: this rank                    1     ``rank N stalled: ...``
    anything else (a bug, the environment)    1     traceback, then ``unexpected error: ...``
    ========================================  ====  ==========================================

    A rank's main thread ends through ``runner.main``; a watcher thread that must end a stuck
    process (``end_process``) gives the same code and line for the same reason."""
    if error is None:
        return Ending(EXIT_DONE, "")
    if isinstance(error, UserError):
        return Ending(EXIT_USER_ERROR, f"error: {error}")
    if isinstance(error, Preempted):
        line = f"{error}; finished work is kept: run the same command again to resume"
        return Ending(error.exit_code, line)
    if isinstance(error, PeerFailed):
        code = EXIT_PREEMPTED if error.preempted else EXIT_PEER_FAILED
        return Ending(code, f"stopping because {error}; finished work is kept for a re-run")
    if isinstance(error, Stalled):
        return Ending(EXIT_UNEXPECTED, f"{error}; finished work is kept for a re-run")
    return Ending(
        EXIT_UNEXPECTED, f"unexpected error: {type(error).__name__}: {error}", traceback=True
    )


def end_process(rank: int | str, error: BaseException) -> None:
    """End this process now, from any thread, as ``runner.main`` would for ``error``: for a
    watcher whose main thread cannot stop by itself (stuck in a hung batch or a collective)."""
    end = ending(error)
    log.error("stopping: %s", end.line)
    print(f"ddpinfer: rank {rank}: {end.line}", file=sys.stderr, flush=True)
    exit_now(end.code)


def exit_now(code: int) -> None:
    """Leave at once (``os._exit``: no interpreter shutdown, which can hang or abort with peers
    gone), ending this process's children first: a vLLM engine's processes are daemons that
    only the interpreter's shutdown would end, and would outlive the rank holding their GPU."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    end_children()
    os._exit(code)


def end_children(wait_s: float = 5.0) -> None:
    """SIGTERM to this process's ``multiprocessing`` children, SIGKILL to those still there
    after ``wait_s``."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + wait_s
    for child in children:
        child.join(timeout=max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()


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
                exit_now(EXIT_INTERRUPTED if name == "SIGINT" else EXIT_PREEMPTED)
            return
        self.received, self._received_at = name, time.monotonic()
        if not self._at_batch_boundary:
            raise Preempted(name)  # interrupts the main thread now: nothing finished to lose
        log.warning("%s received: stopping after the current batch; finished work is kept", name)

    def check(self) -> None:
        if self.received is not None:
            raise Preempted(self.received)
