"""Deliberate failures (config ``fault.*``), so tests can fail a chosen rank at a chosen point,
or make batches run out of memory, through the real entry point and real processes."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time

import torch

from ddpinfer.config import FaultConfig

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by ``fault.kind=raise``."""


def before_units(fault: FaultConfig, rank: int, attempt: int, started: int, count: int) -> None:
    """Before a window of ``count`` units, after ``started`` units on this rank."""
    if fault.at_finish or not started <= fault.at_unit < started + count:
        return
    if _chosen(fault, rank, attempt):
        _fail(fault.kind, rank, f"before its unit #{fault.at_unit}")


def at_finish(fault: FaultConfig, rank: int, attempt: int) -> None:
    """After every rank's work is done, before the part transfer and the merge."""
    if fault.at_finish and _chosen(fault, rank, attempt):
        _fail(fault.kind, rank, "after its work, before the part transfer")


def before_scan(fault: FaultConfig, attempt: int) -> None:
    """Before rank 0's preflight scan: a slow scan (a very large input), on fault.attempt's
    attempt."""
    if fault.scan_delay_s and fault.attempt in (None, attempt):
        time.sleep(fault.scan_delay_s)


def for_attempt(fault: FaultConfig, attempt: int) -> FaultConfig:
    """This attempt's faults: ``fault.delay_s`` slows fault.attempt's attempt only (every attempt
    when unset), so the resumed run of a test that was slowed down to be stopped runs at speed."""
    if fault.attempt is None or fault.attempt == attempt:
        return fault
    return dataclasses.replace(fault, delay_s=0.0, hold_file=None, write_hold_file=None)


def _chosen(fault: FaultConfig, rank: int, attempt: int) -> bool:
    return fault.rank == rank and (fault.attempt is None or fault.attempt == attempt)


def _fail(kind: str, rank: int, where: str) -> None:
    log.warning("injected fault.kind=%s on rank %d %s", kind, rank, where)
    if kind == "hang":  # alive (heartbeats go on) but going nowhere
        time.sleep(24 * 3600)
    if kind == "freeze":  # like a lost node: no heartbeat, and no connection is closed
        os.kill(os.getpid(), signal.SIGSTOP)
    if kind == "exit":
        sys.stderr.write(f"ddpinfer: injected exit on rank {rank}\n")
        sys.stderr.flush()
        os._exit(1)
    raise InjectedFault(f"injected fault on rank {rank} {where}")


def before_batch(fault: FaultConfig, batch_size: int, rank: int = 0, batches_done: int = 0) -> None:
    if fault.delay_s and fault.slow_rank in (None, rank):
        log.debug("fault.delay_s: batch %d waits %.1fs", batches_done, fault.delay_s)
        time.sleep(fault.delay_s)
    if fault.hold_file and fault.slow_rank in (None, rank):
        _hold(fault.hold_file, rank, batches_done)
    if fault.cuda_error_at_batch == batches_done and fault.rank in (None, rank):
        raise RuntimeError(
            f"CUDA error: an illegal memory access was encountered (injected before batch "
            f"{batches_done} by fault.cuda_error_at_batch)"
        )
    if fault.oom_above is not None and batch_size > fault.oom_above:
        raise torch.OutOfMemoryError(
            f"injected: a batch of {batch_size} is over fault.oom_above={fault.oom_above}"
        )


def before_write(fault: FaultConfig, rank: int) -> None:
    """A write into the run directory is prepared and about to become visible."""
    if fault.write_hold_file and os.path.exists(fault.write_hold_file):
        log.info("fault.write_hold_file: rank %d holds before a write while %s exists", rank,
                 fault.write_hold_file)  # fmt: skip
        while os.path.exists(fault.write_hold_file):
            time.sleep(0.05)


def _hold(path: str, rank: int, batches_done: int) -> None:
    """Wait while ``path`` exists (``fault.hold_file``): an event a test controls, where a fixed
    delay would race the machine's speed."""
    if not os.path.exists(path):
        return
    log.info("fault.hold_file: rank %d holds before its batch %d while %s exists", rank,
             batches_done, path)  # fmt: skip
    while os.path.exists(path):
        time.sleep(0.05)
