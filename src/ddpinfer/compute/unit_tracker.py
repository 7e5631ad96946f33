"""A window's results as its rows finish, in any order: per batch for the journal, and per
unit, handed on the moment a unit's last row is done. Shared by the batched runner
(``windows``) and the streaming engines (``stream_loop``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NewType

import numpy as np

from ddpinfer.inputs import Row


@dataclass
class UnitResult:
    """One work unit's outcome in a window: the rows that ran with their task columns, and the
    rest."""

    unit: int
    rows: list[Row]
    good: list[int]
    """Positions into ``rows`` that ran, in row order."""
    columns: dict[str, Any]
    """Task field -> one value per good row (a 2-D array for embeddings, a list otherwise)."""
    errors: list[dict[str, Any]]
    """``{"row", "id", "error"}`` for each row that could not be run."""
    fragment: bool = False
    """Only some of the unit's rows: an earlier attempt left the others done."""


@dataclass
class BatchResult:
    """Some rows' outcome, for the window's journal: the rows that ran, their task columns (as
    in ``UnitResult``), and the rows that could not run."""

    rows: list[Row]
    columns: dict[str, Any]
    errors: list[dict[str, Any]]


WindowKey = NewType("WindowKey", int)
"""A window's name: its first unit (``WindowRows.key``)."""


@dataclass
class WindowRows:
    """Consecutive work units claimed together, and the rows of each still to run. Its ``key``
    names it (its journal, its in-flight state): its first unit, as no unit is in two windows
    of one attempt."""

    units: list[int]
    rows: list[list[Row]]
    """Each unit's rows (those still to run: rows an earlier attempt finished are left out)."""
    fragments: set[int] = field(default_factory=set)
    """The units (by value) with rows left out: their results are fragments."""
    flat: list[Row] = field(default_factory=list)
    """Every unit's rows, one after the other: positions in the window index this."""

    def __post_init__(self) -> None:
        if not self.flat:
            self.flat = [r for unit_rows in self.rows for r in unit_rows]

    @property
    def num_rows(self) -> int:
        return len(self.flat)

    @property
    def key(self) -> WindowKey:
        return WindowKey(self.units[0])


class UnitTracker:
    """Which of a window's units are done. ``outputs`` (position -> (columns, index into
    them)) and ``errors`` (position -> why) are filled as rows finish; ``finish`` then hands on
    the units those rows completed."""

    def __init__(self, window: WindowRows, errors: dict[int, str]) -> None:
        self.window = window
        self.outputs: dict[int, tuple[dict[str, Any], int]] = {}
        self.errors = dict(errors)
        self._left: list[int] = []
        self._unit_of: list[int] = []
        self._starts: list[int] = []
        for u, unit_rows in enumerate(window.rows):
            start = len(self._unit_of)
            self._starts.append(start)
            self._left.append(
                sum(1 for p in range(start, start + len(unit_rows)) if p not in errors)
            )
            self._unit_of.extend([u] * len(unit_rows))

    def done_already(self) -> list[UnitResult]:
        """Units with no row to run (every one failed before running)."""
        return [self._assemble(u) for u, left in enumerate(self._left) if left == 0]

    def finish(self, positions: list[int]) -> list[UnitResult]:
        """These rows (not failed before running) now have an output or an error: the units
        they complete."""
        done = []
        for pos in positions:
            u = self._unit_of[pos]
            self._left[u] -= 1
            if self._left[u] == 0:
                done.append(self._assemble(u))
        return done

    def batch_result(self, positions: list[int]) -> BatchResult:
        window = self.window
        good = sorted(p for p in positions if p in self.outputs)
        bad = [
            {"row": window.flat[p].index, "id": window.flat[p].id, "error": self.errors[p]}
            for p in positions
            if p in self.errors
        ]
        return BatchResult(
            [window.flat[p] for p in good], gather([self.outputs[p] for p in good]), bad
        )

    def _assemble(self, u: int) -> UnitResult:
        start, rows = self._starts[u], self.window.rows[u]
        positions = range(start, start + len(rows))
        good = [p - start for p in positions if p not in self.errors]
        bad = [
            {"row": rows[p - start].index, "id": rows[p - start].id, "error": self.errors[p]}
            for p in positions
            if p in self.errors
        ]
        columns = gather([self.outputs.pop(start + g) for g in good])
        unit = self.window.units[u]
        return UnitResult(unit, rows, good, columns, bad, fragment=unit in self.window.fragments)


def gather(picks: list[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    """Columns of the rows picked from the batches' outputs (``(columns, index)`` each)."""
    columns: dict[str, Any] = {}
    if picks:
        for name in picks[0][0]:
            values = [cols[name][i] for cols, i in picks]
            first = picks[0][0][name]
            columns[name] = np.stack(values) if isinstance(first, np.ndarray) else values
    return columns
