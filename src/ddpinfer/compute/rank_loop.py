"""This rank's inference loop: claim windows of work units through the rendezvous store, run
their batches, journal each batch the moment it is done, and write each unit's part the moment
its last input is."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpinfer import faults
from ddpinfer.compute.batching import BatchLimits
from ddpinfer.compute.feed import WindowFeed
from ddpinfer.compute.part_writer import PartWriter, guarded
from ddpinfer.compute.unit_tracker import BatchResult
from ddpinfer.compute.windows import Throughput, Window, WindowRunner, prepare_window
from ddpinfer.compute.work import WorkBoard, claims, rows_reader
from ddpinfer.config import Config
from ddpinfer.launch import FILE_ONLY, LaunchEnv, Watch
from ddpinfer.plan import Plan

log = logging.getLogger("ddpinfer")

DEFAULT_MAX_TOKENS = {"cpu": 1024, "cuda": 16384}
"""Padded tokens per forward pass when batch.max_tokens is unset (see benchmarks/)."""


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
    fault = faults.for_attempt(cfg.fault, env.attempt)
    runner = WindowRunner(task, limits, watch.before_batch, fault, env.rank)
    read = _window_reader(plan, task, limits)
    busy, started_units, finished = 0.0, 0, 0
    with (
        PartWriter(
            run_dir, keep=plan.spec.keep, before_write=guarded(watch, fault, env.rank)
        ) as writer,
        WindowFeed(claims(plan, env, board, window_rows).next, read, watch.check_stop) as feed,
    ):
        for window in feed:
            faults.before_units(cfg.fault, env.rank, env.attempt, started_units, len(window.units))
            started_units += len(window.units)
            key = window.key

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
    """Reads and prepares the window of the given units (on the feed's thread)."""
    read = rows_reader(plan)
    pin = task.device.type == "cuda"

    def make(units: list[int]) -> Window:
        rows = read(units)
        return prepare_window(task, units, rows.rows, limits, pin, rows.fragments)

    return make


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
