"""Split the inputs into work units and assign units to ranks.

A work unit is a run of consecutive rows. It is the grain of everything after reading: it is
assigned to one rank, batched on its own, written as one part file, and counts as done once that
part exists. Unit boundaries depend only on the row count and the unit size, never on the world
size, so finished units stay valid when a run resumes with a different number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def auto_unit_size(num_rows: int) -> int:
    """About 256 units for large inputs, 16..4096 rows each."""
    return min(4096, max(16, math.ceil(num_rows / 256)))


def plan_units(num_rows: int, unit_size: int | None = None) -> list[range]:
    size = unit_size or auto_unit_size(num_rows)
    return [range(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


def assign(num_items: int, rank: int, world_size: int) -> range:
    """This rank's contiguous share of ``num_items``: the first ``num_items % world_size`` ranks
    take one more, so shares differ by at most one and cover every item exactly once."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def split_rows(rows: Iterable[T], units: list[range]) -> Iterator[list[T]]:
    """Cut a stream of rows ``units[0].start, ...`` into the given ascending units, dropping
    rows that fall between them (units finished earlier, or another rank's)."""
    it = iter(rows)
    position = units[0].start if units else 0
    for unit in units:
        for _ in range(unit.start - position):
            next(it)
        yield [next(it) for _ in unit]
        position = unit.stop
