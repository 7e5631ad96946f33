"""A rank's windows of rows, each read from where it starts: the rows between one window and
the next (other ranks' work) are not decoded.

JSON Lines and text files seek to the plan's point at or before a window (``inputs/seek.py``)
when it lies past where the last window stopped. CSV, which has no seek points, reads on from
there, passing over the rows between undecoded. Parquet and Arrow keep their record batches
open across windows: batches before a window are passed over by their row counts, only the
window's rows become records, and a window far ahead reopens the file at its row group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ddpinfer.inputs.readers import (
    COLUMNAR,
    InputSpec,
    LineRecord,
    Row,
    column_batches,
    line_records,
    make_row,
    num_rows,
)
from ddpinfer.inputs.seek import SeekIndex

REOPEN_ROWS = 1 << 16
"""A columnar window this many rows past the batch in hand reopens the file at its row group
rather than decoding the batches between."""


class RowStream:
    """Reads any window of rows; ascending windows cost only their own rows."""

    def __init__(self, spec: InputSpec, seek: SeekIndex | None = None) -> None:
        self.spec = spec
        self.seek = seek
        self._records: Iterator[LineRecord] | None = None
        self._next = 0
        self._batches = _Batches(spec)

    def read(self, rows: range) -> Iterator[Row]:
        if self.spec.format in COLUMNAR:
            yield from self._batches.read(rows)
            return
        if self._records is None or rows.start < self._next or self._seek_helps(rows.start):
            self._records = line_records(self.spec, rows.start, self.seek)
        for record in self._records:
            self._next = record.row + 1
            if record.row >= rows.start:
                yield record.make(self.spec)
            if self._next >= rows.stop:
                return

    def _seek_helps(self, start: int) -> bool:
        point = self.seek.before(start) if self.seek is not None else None
        return point is not None and point.row > self._next


class _Batches:
    """The record batches of Parquet or Arrow files, from a row on, with the batch in hand."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._it: Iterator[tuple[Path, int, int, Any]] | None = None
        self._batch: tuple[Path, int, int, Any] | None = None  # file, first row, in file, batch

    def read(self, rows: range) -> Iterator[Row]:
        if self._batch is None or not self._batch[1] <= rows.start < self._end() + REOPEN_ROWS:
            self._it, self._batch = self._from(rows.start), None
        while True:
            if self._batch is None or self._end() <= rows.start:
                self._batch = next(self._it, None)  # type: ignore[arg-type]
                if self._batch is None:
                    return
                continue
            file, first, in_file, batch = self._batch
            begin = max(rows.start, first) - first
            part = batch.slice(begin, min(rows.stop, self._end()) - first - begin)
            for k, record in enumerate(part.to_pylist(), in_file + begin):
                yield make_row(self.spec, file, first - in_file + k, f"row {k}", record)
            if self._end() >= rows.stop:
                return
            self._batch = None

    def _end(self) -> int:
        return self._batch[1] + self._batch[3].num_rows  # type: ignore[index]

    def _from(self, start: int) -> Iterator[tuple[Path, int, int, Any]]:
        first = 0  # the row of the file's first record: rows count on across files
        for file in self.spec.files:
            size = num_rows(self.spec.format, file)
            if first + size > start:
                for in_file, batch in column_batches(self.spec, file, max(0, start - first)):
                    yield file, first + in_file, in_file, batch
            first += size
