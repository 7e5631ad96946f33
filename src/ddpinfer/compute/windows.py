"""Run windows of work units through a task: length-sorted batches in, one result per unit out.

A *window* is a few consecutive work units claimed together. Its inputs are prepared
(tokenized) once and sorted by length across all of them, so batches pack tightly however small
the units are; each unit's result is handed on the moment its last input is done.

Failures stay as small as they can: a batch that runs out of memory is split in halves and
retried down to single inputs, and the budget for inputs that wide shrinks (``TokenBudget``); an
input that makes the model raise is found the same way and recorded as an error. Nothing here is
collective, so no rank falls out of step with the others.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ddpinfer import faults
from ddpinfer.compute import device_mix, packing
from ddpinfer.compute.batching import (
    BatchLimits,
    TokenBudget,
    plan_batches,
    plan_packed,
    split_to_fit,
)
from ddpinfer.compute.tasks.base import Task, rows_to_columns, to_device
from ddpinfer.compute.unit_tracker import BatchResult, UnitResult, UnitTracker, WindowRows
from ddpinfer.config import FaultConfig
from ddpinfer.inputs import Row
from ddpinfer.launch import PeerFailed, Preempted

log = logging.getLogger(__name__)


@dataclass
class Window(WindowRows):
    """Consecutive work units prepared together: items tokenized, batches planned and collated."""

    items: list[Any] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    """Position in ``flat`` -> why it cannot run."""
    batches: list[list[int]] = field(default_factory=list)
    collated: list[dict[str, torch.Tensor]] = field(default_factory=list)


def prepare_window(
    task: Task,
    units: list[int],
    rows: list[list[Row]],
    limits: BatchLimits,
    pin: bool = False,
    fragments: set[int] | None = None,
) -> Window:
    """Tokenize every runnable row once, sort by cost and cut batches (background thread)."""
    window = Window(units, rows, fragments=set(fragments or ()))
    runnable = []
    for pos, row in enumerate(window.flat):
        if row.error is not None:
            window.errors[pos] = row.error
        else:
            runnable.append(pos)
    items: list[Any] = [None] * window.num_rows
    for pos, item in zip(runnable, task.prepare([window.flat[p] for p in runnable]), strict=True):
        if isinstance(item, Exception):
            window.errors[pos] = str(item)
        else:
            items[pos] = item
    window.items = items
    todo = [p for p in runnable if p not in window.errors]
    plan = plan_packed if task.packed else plan_batches
    planned = plan([task.cost(items[p]) for p in todo], limits)
    window.batches = [[todo[j] for j in batch] for batch in planned]
    window.collated = [_collate(task, [items[p] for p in b], pin) for b in window.batches]
    return window


def _collate(task: Task, items: list[Any], pin: bool) -> dict[str, torch.Tensor]:
    batch = task.collate(items)
    if not pin:
        return batch
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class Throughput:
    """What this rank computed: inputs, and real vs padded tokens (padding efficiency)."""

    inputs: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    compute_seconds: float = 0.0
    """Time in forward passes: the rest of the inference phase is the pipeline's overhead
    (waiting for a window to be tokenized, claiming, writing)."""

    def add(self, batch: dict[str, torch.Tensor], rows: int) -> None:
        mask = batch.get("attention_mask")
        self.batches += 1
        self.inputs += rows
        if packing.LENGTHS in batch:  # packed: every computed token is real
            tokens = int(batch[packing.LENGTHS].sum())
            self.real_tokens += tokens
            self.padded_tokens += tokens
        elif mask is not None:
            self.real_tokens += int(mask.sum())
            self.padded_tokens += mask.numel()


class WindowRunner:
    def __init__(
        self,
        task: Task,
        limits: BatchLimits,
        check_stop: Callable[[], None],
        fault: FaultConfig,
        rank: int = 0,
    ) -> None:
        self.task = task
        self.budget = TokenBudget(limits)
        self.check_stop = check_stop
        self.fault = fault
        self.rank = rank
        self.stats = Throughput()
        self._busy_tokens = 0

    def run(
        self,
        window: Window,
        unit_done: Callable[[UnitResult], None],
        batch_done: Callable[[BatchResult], None] = lambda result: None,
        near_end: Callable[[], None] = lambda: None,
        lead_s: float = 0.0,
    ) -> None:
        """Run every batch of ``window``. ``batch_done`` gets each batch's results as soon as it
        is done (and first the window's inputs that could not be prepared); ``unit_done`` each
        unit as soon as all of its rows are; ``near_end`` is called once, when about ``lead_s``
        seconds of compute are left (time to claim and prepare the next window, and no earlier:
        a claim taken too soon is work another rank could have done)."""
        tracker = UnitTracker(window, window.errors)
        if window.errors:
            batch_done(tracker.batch_result(sorted(window.errors)))
        for result in tracker.done_already():
            unit_done(result)
        sizes = [c["input_ids"].numel() if "input_ids" in c else 1 for c in window.collated]
        tokens_left = sum(sizes)
        signalled = False
        for n, (batch, collated) in enumerate(zip(window.batches, window.collated)):
            if not signalled and self._seconds_for(tokens_left, n == len(sizes) - 1) <= lead_s:
                near_end()
                signalled = True
            self.check_stop()
            began = time.perf_counter()
            self._run_fitting(window, batch, collated, tracker.outputs, tracker.errors)
            self.stats.compute_seconds += time.perf_counter() - began
            self._busy_tokens += sizes[n]
            tokens_left -= sizes[n]
            batch_done(tracker.batch_result(batch))
            for result in tracker.finish(batch):
                unit_done(result)
        if not signalled:
            near_end()

    def _seconds_for(self, tokens: int, last: bool) -> float:
        """Estimated compute time of ``tokens`` padded tokens (0 for the last batch when
        nothing has been measured yet)."""
        if self._busy_tokens == 0:
            return 0.0 if last else float("inf")
        return tokens * self.stats.compute_seconds / self._busy_tokens

    def _run_fitting(self, window: Window, batch: list[int], collated, outputs, errors) -> None:
        """Run a planned batch, in pieces if the budget shrank since it was planned."""
        costs = [self.task.cost(window.items[p]) for p in batch]
        cap = self.budget.max_tokens(max(costs))
        starts = split_to_fit(costs, self.budget.limits.max_rows, cap, self.task.packed)
        if len(starts) == 1:
            self._run_batch(window, batch, collated, outputs, errors)
            return
        for start, end in zip(starts, [*starts[1:], len(batch)]):
            self._run_batch(window, batch[start:end], None, outputs, errors)

    def _run_batch(self, window: Window, batch: list[int], collated, outputs, errors) -> None:
        # Retries happen after the except blocks, never inside them: a live exception keeps the
        # failed forward pass's frames, and with them its GPU memory, alive.
        if collated is None:
            collated = _collate(self.task, [window.items[p] for p in batch], False)
        failure: BaseException | None = None
        try:
            faults.before_batch(self.fault, len(batch), self.rank, self.stats.batches)
            rows = [window.flat[p].index for p in batch]
            result = self.task(to_device(collated, self.task.device), rows)
            columns = rows_to_columns(result) if isinstance(result, list) else dict(result)
            _check_lengths(columns, len(batch))
        except (PeerFailed, Preempted, KeyboardInterrupt):
            raise
        except Exception as e:
            failure = e
        costs = [self.task.cost(window.items[p]) for p in batch]
        width = max(costs)
        if failure is None:
            self.stats.add(collated, len(batch))
            self.budget.fitted(width)
            for i, pos in enumerate(batch):
                outputs[pos] = (columns, i)
            return
        if device_mix.is_device_mix(failure, self.task.model):  # placement, not a bad input
            raise device_mix.DeviceMixError(
                device_mix.explain_device_mix(self.task.model, failure)
            ) from failure
        if is_transient(failure):
            raise TransientError(
                f"{type(failure).__name__}: {failure} (rows {window.flat[batch[0]].index}...; "
                "this work unit is not written and is retried when the same command runs again)"
            ) from failure
        out_of_memory = isinstance(failure, torch.OutOfMemoryError)
        reason = f"{type(failure).__name__}: {failure}"
        failure = None
        if out_of_memory:
            _free_memory()
        if len(batch) == 1:
            row = window.flat[batch[0]]
            errors[batch[0]] = ("out of memory even alone: " if out_of_memory else "") + reason
            log.warning("row %d failed: %s", row.index, reason)
            return
        if out_of_memory:
            self.budget.out_of_memory(width, len(batch), sum(costs) if self.task.packed else None)
        half = (len(batch) + 1) // 2
        for part in (batch[:half], batch[half:]):
            self._run_batch(window, part, None, outputs, errors)


class TransientError(RuntimeError):
    """A failure that says nothing about the inputs (a CUDA fault, an I/O error): the unit fails
    as a whole, so that a re-run retries it instead of recording its rows as bad."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return False
    if isinstance(error, OSError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("CUDA error" in text or "NCCL" in text)


def _check_lengths(columns: dict[str, Any], rows: int) -> None:
    for name, values in columns.items():
        if len(values) != rows:
            raise ValueError(
                f"the task returned {len(values)} values of {name!r} for {rows} inputs"
            )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
