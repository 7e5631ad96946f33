"""Deliberate failures (config ``fault.*``), so tests can fail a chosen rank at a chosen point
through the real entry point and real processes."""

from __future__ import annotations

import os
import sys

from ddpinfer.config import FaultConfig


class InjectedFault(RuntimeError):
    """Raised on purpose by ``fault.kind=raise``."""


def maybe_fail(fault: FaultConfig, rank: int, units_started: int) -> None:
    if fault.rank != rank or units_started != fault.at_unit:
        return
    if fault.kind == "exit":
        sys.stderr.write(f"ddpinfer: injected exit on rank {rank}\n")
        sys.stderr.flush()
        os._exit(1)
    raise InjectedFault(f"injected fault on rank {rank} before its unit #{units_started}")
