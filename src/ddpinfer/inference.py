"""Run one work unit through a task: length-sorted batches in, records in row order out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ddpinfer.batching import length_sorted_batches
from ddpinfer.inputs import Row
from ddpinfer.tasks.base import Task


def run_unit(task: Task, rows: Sequence[Row], batch_size: int) -> list[dict[str, Any]]:
    """One record per row, ``{"row", "id", <task fields>}``, in row order."""
    lengths = task.token_lengths([r.text for r in rows])
    records: list[dict[str, Any]] = [{} for _ in rows]
    for batch in length_sorted_batches(lengths, batch_size):
        outputs = task([rows[i].text for i in batch], [rows[i].index for i in batch])
        for i, output in zip(batch, outputs, strict=True):
            records[i] = {"row": rows[i].index, "id": rows[i].id, **output}
    return records


def group_by_unit(rows: Iterable[Row], units: Sequence[range]) -> Iterator[list[Row]]:
    """Cut a stream of consecutive rows into the given consecutive units."""
    it = iter(rows)
    for unit in units:
        chunk = [next(it) for _ in unit]
        yield chunk
