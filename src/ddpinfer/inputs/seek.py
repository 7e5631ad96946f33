"""Where rows start in line-based inputs (JSON Lines, plain text), so a rank seeks straight to
its windows instead of reading every row before them.

Rank 0's scan reads every line anyway: every ``stride``-th row it notes the row's file, byte
offset and line number (``SeekIndex.add``). The plan keeps the point at or before each work
unit's start (``SeekIndex.at_rows``) and hands it to every rank. CSV has none: a quoted field
may hold a newline, so a byte offset found by lines is not known to start a record. Parquet and
Arrow need none: their row counts (footer, batch headers) say where each row is.
"""

from __future__ import annotations

import bisect
from array import array
from typing import NamedTuple

MAX_POINTS = 1 << 20
"""Points kept while scanning (40 MiB); past it every other one is dropped."""


class SeekPoint(NamedTuple):
    row: int
    """The row that starts here."""
    file: int
    """Its file's position in ``InputSpec.files``."""
    offset: int
    """The byte offset of its line in that file."""
    line: int
    """Lines of that file before it (blank ones included): its line number less one."""
    lines_before: int
    """Lines in the files before that one (plain text: ids are line numbers across files)."""


class SeekIndex:
    """Seek points in row order, one every ``stride`` rows (compact: five integer arrays)."""

    def __init__(self, stride: int, max_points: int = MAX_POINTS) -> None:
        self.stride = stride
        self.max_points = max_points
        self._columns = tuple(array("q") for _ in SeekPoint._fields)

    def __len__(self) -> int:
        return len(self._columns[0])

    def add(self, *point: int) -> None:
        """Note a ``SeekPoint`` (given as its fields); the caller adds them in row order."""
        for column, value in zip(self._columns, point, strict=True):
            column.append(value)
        if len(self) > self.max_points:
            self._thin()

    def wants(self, row: int) -> bool:
        return row % self.stride == 0

    def before(self, row: int) -> SeekPoint | None:
        """The last point at or before ``row``; None when there is none."""
        k = bisect.bisect_right(self._columns[0], row) - 1
        return SeekPoint(*(c[k] for c in self._columns)) if k >= 0 else None

    def at_rows(self, rows: list[int]) -> SeekIndex:
        """The index of only the points at or before each of ``rows`` (the work units'
        starts): what the plan carries to every rank."""
        kept = SeekIndex(self.stride, max(len(rows), 1))
        last = -1
        for row in rows:
            point = self.before(row)
            if point is not None and point.row != last:
                kept.add(*point)
                last = point.row
        return kept

    def _thin(self) -> None:
        self.stride *= 2
        keep = [k for k, row in enumerate(self._columns[0]) if row % self.stride == 0]
        self._columns = tuple(array("q", (c[k] for k in keep)) for c in self._columns)
