"""This rank's inference loop: claim windows of work units through the rendezvous store, run
their batches, and write each unit's part the moment its last input is done."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpinfer import faults
from ddpinfer.compute.batching import BatchLimits
from ddpinfer.compute.feed import WindowFeed
from ddpinfer.compute.part_writer import PartWriter
from ddpinfer.compute.windows import Throughput, UnitResult, Window, WindowRunner, prepare_window
from ddpinfer.config import Config
from ddpinfer.inputs import Row, RowStream
from ddpinfer.launch import FILE_ONLY, Watch, connect_store
from ddpinfer.plan import Plan, work_units

log = logging.getLogger("ddpinfer")

DEFAULT_MAX_TOKENS = {"cpu": 1024, "cuda": 16384}
"""Padded tokens per forward pass when batch.max_tokens is unset (see benchmarks/)."""


def _unit_counter(env) -> Callable[[int], int]:
    """The counter every rank claims work units from: the rendezvous store's atomic add."""
    if not env.is_distributed:
        return work_units.local_counter()
    store = connect_store(env, datetime.timedelta(seconds=60), "work")
    return lambda n: store.add("claimed", n)


def run_units(
    cfg: Config,
    env,
    run_dir: Path,
    plan: Plan,
    task,
    watch: Watch,
    on_unit: Callable[[int, int, int], None],
) -> tuple[list[int], Throughput]:
    """Claim windows of work units until none are left; each unit's part is written as soon as
    its last input is done. ``watch.before_batch`` runs before each batch (it counts as progress),
    ``watch.check_stop`` while waiting for the next window (which does not), and
    ``watch.fence`` before each part is written; ``on_unit(inputs, errors, tokens so far)`` as
    each unit is handed to the part writer (the progress display)."""
    limits = batch_limits(cfg, task.device)
    window_rows = min(cfg.batch.sort_rows, task.window_rows or cfg.batch.sort_rows)
    claims = work_units.UnitClaims(
        plan.pending, plan.unit_size, env.world_size, window_rows, _unit_counter(env)
    )
    fault = faults.for_attempt(cfg.fault, env.attempt)
    runner = WindowRunner(task, limits, watch.before_batch, fault, env.rank)
    pin = task.device.type == "cuda"
    inputs = RowStream(plan.spec)

    def make_window(units: list[int]) -> Window:
        ranges = [plan.units[u] for u in units]
        stream = inputs.read(range(ranges[0].start, ranges[-1].stop))
        rows = [
            [_mark_bad(r, plan.bad_rows) for r in unit_rows]
            for unit_rows in work_units.split_rows(stream, ranges)
        ]
        return prepare_window(task, units, rows, limits, pin)

    start, started_units = time.perf_counter(), 0
    with (
        PartWriter(run_dir, keep=plan.spec.keep, before_write=watch.fence) as writer,
        WindowFeed(claims.next, make_window, watch.check_stop) as feed,
    ):

        def unit_done(result: UnitResult) -> None:
            writer.submit(result)
            on_unit(len(result.rows), len(result.errors), runner.stats.real_tokens)

        for window in feed:
            faults.before_units(cfg.fault, env.rank, env.attempt, started_units, len(window.units))
            started_units += len(window.units)
            runner.run(window, unit_done, feed.request_next, feed.lead_s)
            writer.check()
            elapsed = max(time.perf_counter() - start, 1e-9)
            log.info(
                "units %s done (%d units so far, %.1f inputs/s, padding efficiency %.2f)",
                _unit_span(window.units),
                started_units,
                runner.stats.inputs / elapsed,
                runner.stats.real_tokens / max(1, runner.stats.padded_tokens),
                extra=FILE_ONLY,  # rank 0's console has the progress bar instead
            )
    return writer.done, runner.stats


def _unit_span(units: list[int]) -> str:
    return str(units[0]) if len(units) == 1 else f"{units[0]}-{units[-1]}"


def batch_limits(cfg: Config, device: torch.device) -> BatchLimits:
    default = DEFAULT_MAX_TOKENS["cuda" if device.type == "cuda" else "cpu"]
    return BatchLimits(cfg.batch_size, cfg.batch.max_tokens or default)


def _mark_bad(row: Row, bad_rows: dict[int, str]) -> Row:
    reason = bad_rows.get(row.index)
    return row if reason is None or row.error else dataclasses.replace(row, text="", error=reason)
