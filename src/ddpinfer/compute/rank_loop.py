"""This rank's inference loop: claim windows of work units through the rendezvous store, run
their batches, journal each batch the moment it is done, and write each unit's part the moment
its last input is."""

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
from ddpinfer.compute.unit_tracker import BatchResult
from ddpinfer.compute.windows import Throughput, Window, WindowRunner, prepare_window
from ddpinfer.config import Config
from ddpinfer.inputs import Row, RowStream
from ddpinfer.launch import FILE_ONLY, LaunchEnv, Watch, connect_store
from ddpinfer.plan import Plan, work_units

log = logging.getLogger("ddpinfer")

DEFAULT_MAX_TOKENS = {"cpu": 1024, "cuda": 16384}
"""Padded tokens per forward pass when batch.max_tokens is unset (see benchmarks/)."""


class WorkBoard:
    """What ranks share about the work, in the rendezvous store: the counter units are claimed
    from, and each rank's measured speed (inputs/s), from which windows are sized."""

    def __init__(self, env: LaunchEnv) -> None:
        self.rank, self.world_size = env.rank, env.world_size
        self._rate: float | None = None
        self._store = None
        self._local = work_units.local_counter()
        if env.is_distributed:
            self._store = connect_store(env, datetime.timedelta(seconds=60), "work")

    def add(self, n: int) -> int:
        return self._local(n) if self._store is None else self._store.add("claimed", n)

    def publish(self, rate: float) -> None:
        self._rate = rate
        if self._store is not None:
            self._store.set(f"rate/{self.rank}", repr(rate))

    def rates(self) -> list[float | None]:
        if self._store is None:
            return work_units.one_rank_rates()
        store, rates = self._store, []
        for r in range(self.world_size):
            if r == self.rank:
                rates.append(self._rate)
            else:
                rates.append(float(store.get(f"rate/{r}")) if store.check([f"rate/{r}"]) else None)
        return rates


def run_units(
    cfg: Config,
    env: LaunchEnv,
    run_dir: Path,
    plan: Plan,
    task,
    watch: Watch,
    on_batch: Callable[[int, int, int], None],
) -> tuple[list[Path], Throughput]:
    """Claim windows of work units until none are left. ``watch.before_batch`` runs before each
    batch (it counts as progress), ``watch.check_stop`` while waiting for the next window
    (which does not), and ``watch.fence`` before each write; ``on_batch(inputs, errors, tokens
    so far)`` as each batch is done (the progress display). Returns the part and fragment
    files written, and this rank's throughput."""
    limits = batch_limits(cfg, task.device)
    window_rows = min(cfg.batch.sort_rows, task.window_rows or cfg.batch.sort_rows)
    board = WorkBoard(env)
    claims = work_units.UnitClaims(
        plan.pending, plan.unit_size, env.rank, window_rows, board.add, board.rates
    )
    fault = faults.for_attempt(cfg.fault, env.attempt)
    runner = WindowRunner(task, limits, watch.before_batch, fault, env.rank)
    read = _window_reader(plan, task, limits)
    busy, started_units, finished = 0.0, 0, 0
    with (
        PartWriter(run_dir, keep=plan.spec.keep, before_write=watch.fence) as writer,
        WindowFeed(claims.next, read, watch.check_stop) as feed,
    ):
        for window in feed:
            faults.before_units(cfg.fault, env.rank, env.attempt, started_units, len(window.units))
            started_units += len(window.units)
            key = window.units[0]

            def batch_done(result: BatchResult, key=key) -> None:
                nonlocal finished
                rows = len(result.rows) + len(result.errors)
                finished += rows
                log.debug("batch of %d input(s) done (%d this attempt)", rows, finished)
                writer.submit_batch(key, result)
                on_batch(rows, len(result.errors), runner.stats.real_tokens)

            began = time.perf_counter()
            runner.run(window, writer.submit, batch_done, feed.request_next, feed.lead_s)
            writer.end_window(key)
            busy += time.perf_counter() - began
            board.publish(runner.stats.inputs / max(busy, 1e-9))
            _log_window(window, started_units, runner.stats, busy)
    return writer.done, runner.stats


def _window_reader(plan: Plan, task, limits: BatchLimits) -> Callable[[list[int]], Window]:
    """Reads and prepares the window of the given units (on the feed's thread): their rows in
    one pass over the input, less the rows an earlier attempt finished."""
    stream = RowStream(plan.spec)
    pin = task.device.type == "cuda"

    def read(units: list[int]) -> Window:
        ranges = [plan.units[u] for u in units]
        rows = stream.read(range(ranges[0].start, ranges[-1].stop))
        per_unit = []
        for unit, unit_rows in zip(units, work_units.split_rows(rows, ranges)):
            done = plan.done_rows.get(unit, ())
            kept = [_mark_bad(r, plan.bad_rows) for r in unit_rows if r.index not in done]
            per_unit.append(kept)
        fragments = {u for u in units if u in plan.done_rows}
        return prepare_window(task, units, per_unit, limits, pin, fragments)

    return read


def _log_window(window: Window, units_so_far: int, stats: Throughput, busy: float) -> None:
    log.info(
        "units %s done (%d units so far, %.1f inputs/s, padding efficiency %.2f)",
        _unit_span(window.units),
        units_so_far,
        stats.inputs / max(busy, 1e-9),
        stats.real_tokens / max(1, stats.padded_tokens),
        extra=FILE_ONLY,  # rank 0's console has the progress bar instead
    )


def _unit_span(units: list[int]) -> str:
    return str(units[0]) if len(units) == 1 else f"{units[0]}-{units[-1]}"


def batch_limits(cfg: Config, device: torch.device) -> BatchLimits:
    default = DEFAULT_MAX_TOKENS["cuda" if device.type == "cuda" else "cpu"]
    return BatchLimits(cfg.batch_size, cfg.batch.max_tokens or default)


def _mark_bad(row: Row, bad_rows: dict[int, str]) -> Row:
    reason = bad_rows.get(row.index)
    return row if reason is None or row.error else dataclasses.replace(row, text="", error=reason)
