"""Deliberate failures (config ``fault.*``), so tests can fail a chosen rank at a chosen point,
or make batches run out of memory, through the real entry point and real processes."""

from __future__ import annotations

import os
import sys
import time

import torch

from ddpinfer.config import FaultConfig


class InjectedFault(RuntimeError):
    """Raised on purpose by ``fault.kind=raise``."""


def before_unit(fault: FaultConfig, rank: int, attempt: int, units_started: int) -> None:
    if fault.rank != rank or units_started != fault.at_unit:
        return
    if fault.attempt is not None and fault.attempt != attempt:
        return
    if fault.kind == "hang":  # alive (heartbeats go on) but going nowhere
        time.sleep(24 * 3600)
    if fault.kind == "exit":
        sys.stderr.write(f"ddpinfer: injected exit on rank {rank}\n")
        sys.stderr.flush()
        os._exit(1)
    raise InjectedFault(f"injected fault on rank {rank} before its unit #{units_started}")


def before_batch(fault: FaultConfig, batch_size: int) -> None:
    if fault.delay_s:
        time.sleep(fault.delay_s)
    if fault.oom_above is not None and batch_size > fault.oom_above:
        raise torch.OutOfMemoryError(
            f"injected: a batch of {batch_size} is over fault.oom_above={fault.oom_above}"
        )
