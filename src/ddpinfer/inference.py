"""Run one work unit through a task: length-sorted batches in, records in row order out.

Failures stay as small as they can: a batch that runs out of memory is split in halves and
retried down to single inputs (and later batches stay at the size that fitted); an input that
makes the tokenizer or model raise is found the same way and recorded as an error. Nothing here
is collective, so no rank falls out of step with the others.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddpinfer import faults
from ddpinfer.batching import longest_first
from ddpinfer.config import FaultConfig
from ddpinfer.inputs import Row
from ddpinfer.stopping import PeerFailed, Preempted
from ddpinfer.tasks.base import Task

log = logging.getLogger(__name__)

Record = dict[str, Any]


class UnitFailed(RuntimeError):
    """Every input of a unit failed in the model: a broken model or set-up, not bad inputs."""


class UnitRunner:
    def __init__(
        self, task: Task, batch_size: int, check_stop: Callable[[], None], fault: FaultConfig
    ) -> None:
        self.task = task
        self.batch_size = batch_size
        self.check_stop = check_stop
        self.fault = fault

    def run(self, rows: Sequence[Row]) -> list[Record]:
        """One record per row, ``{"row", "id", ...}``, in row order; a row that could not be
        run gets ``{"row", "id", "error"}``."""
        records: list[Record | None] = [None] * len(rows)
        for i, row in enumerate(rows):
            if row.error is not None:
                records[i] = _error(row, row.error)
        todo = [i for i, row in enumerate(rows) if row.error is None]
        order = [todo[j] for j in longest_first(self._lengths(rows, todo, records))]
        order = [i for i in order if records[i] is None]
        start = 0
        while start < len(order):
            self.check_stop()
            batch = order[start : start + self.batch_size]
            self._run_batch(rows, batch, records)
            start += len(batch)
        ran = [i for i in todo if "error" not in records[i]]
        if todo and not ran:
            raise UnitFailed(
                f"every input of rows {rows[0].index}-{rows[-1].index} failed; "
                f"the first: {records[todo[0]]['error']}"
            )
        return records  # type: ignore[return-value]

    def _lengths(self, rows, todo: list[int], records) -> list[int]:
        try:
            return self.task.token_lengths([rows[i].text for i in todo])
        except Exception:  # one text breaks the tokenizer: find it, measure the rest one by one
            lengths = []
            for i in todo:
                try:
                    lengths.append(self.task.token_lengths([rows[i].text])[0])
                except Exception as e:
                    records[i] = _error(rows[i], f"tokenizer failed: {type(e).__name__}: {e}")
                    lengths.append(0)
            return lengths

    def _run_batch(self, rows: Sequence[Row], batch: list[int], records: list) -> None:
        # Retries happen after the except blocks, never inside them: a live exception keeps the
        # failed forward pass's frames, and with them its GPU memory, alive.
        failure: BaseException | None = None
        try:
            faults.before_batch(self.fault, len(batch))
            outputs = self.task([rows[i].text for i in batch], [rows[i].index for i in batch])
        except (PeerFailed, Preempted, KeyboardInterrupt):
            raise
        except Exception as e:
            failure = e
        if failure is None:
            for i, output in zip(batch, outputs, strict=True):
                records[i] = {"row": rows[i].index, "id": rows[i].id, **output}
            return
        out_of_memory = isinstance(failure, torch.OutOfMemoryError)
        reason = f"{type(failure).__name__}: {failure}"
        failure = None
        if out_of_memory:
            _free_memory()
        if len(batch) == 1:
            row = rows[batch[0]]
            records[batch[0]] = _error(
                row, ("out of memory even alone: " if out_of_memory else "") + reason
            )
            log.warning("row %d failed: %s", row.index, reason)
            return
        if out_of_memory and len(batch) <= self.batch_size:
            self.batch_size = max(1, len(batch) // 2)
            log.warning(
                "out of memory at batch size %d; going on with %d", len(batch), self.batch_size
            )
        self._split(rows, batch, records)

    def _split(self, rows, batch: list[int], records: list) -> None:
        half = (len(batch) + 1) // 2
        for part in (batch[:half], batch[half:]):
            self._run_batch(rows, part, records)


def _error(row: Row, reason: str) -> Record:
    return {"row": row.index, "id": row.id, "error": reason}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
