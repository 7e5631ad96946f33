"""Split the inputs into work units and hand them out to ranks as they ask.

A work unit is a run of consecutive rows. It is the grain of claiming, resume and part files: it
is claimed by one rank, written as one part file, and counts as done once that part exists. Unit
boundaries depend only on the row count and the unit size, never on the world size, so finished
units stay valid when a run resumes with a different number of ranks.

Ranks claim the pending units through one atomic counter (the rendezvous store's ``add``), a
window of consecutive units at a time: large windows while much is left (inputs are sorted by
length across a window, so batches pack tightly), one unit at a time near the end. A window is
this rank's share of half of what is left, its share being its measured speed over the sum of
every rank's ("weighted factoring"): each window takes every rank about half the remaining
ideal time, however fast or slow it is, so all ranks finish together. Until a rank has measured
itself, its windows are a single unit: a rank that turns out 10x slower than the others holds
no more than one unit of work nobody else can do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MIN_AUTO_UNIT = 64
MAX_AUTO_UNIT = 4096


def auto_unit_size(num_rows: int) -> int:
    """About 256 units for large inputs: a power of two rows each, 64 to 4096. Batches are cut
    across the units of a window, so a small unit never makes a small batch."""
    size = MIN_AUTO_UNIT
    while size < MAX_AUTO_UNIT and size * 256 < num_rows:
        size *= 2
    return size


def plan_units(num_rows: int, unit_size: int | None = None) -> list[range]:
    size = unit_size or auto_unit_size(num_rows)
    return [range(start, min(start + size, num_rows)) for start in range(0, num_rows, size)]


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


class UnitClaims:
    """Windows of pending units for this rank, claimed through a shared counter.

    ``add(n)`` atomically adds ``n`` to the counter shared by all ranks and returns the new
    value (the store's ``add``), so each claimed range is this rank's alone. ``rates()`` gives
    the ranks' measured speeds (inputs/s) as a ``RateSum``: this rank's own, their sum and
    how many ranks have measured one, which the store keeps in two counters, so a claim costs
    the same few store operations whatever the world size. A window takes
    ``remaining × mine / sum(rates) / 2`` units, at most ``max_rows`` rows' worth and at least
    one; one unit while this rank has no rate of its own. Ranks that read ``remaining`` at the
    same moment take their shares of it, which still hands out at most half of what is left.
    """

    def __init__(
        self,
        pending: list[int],
        unit_size: int,
        rank: int,
        max_rows: int,
        add: Callable[[int], int],
        rates: Callable[[], RateSum],
    ) -> None:
        self.pending = pending
        self.rank = rank
        self.max_units = max(1, max_rows // max(1, unit_size))
        self.add = add
        self.rates = rates

    def next(self) -> list[int]:
        """The next window (positions into ``pending``' units, ascending); [] when all are out."""
        remaining = len(self.pending) - self.add(0)
        if remaining <= 0:
            return []
        want = max(1, min(self.max_units, math.ceil(remaining * self.share() / 2)))
        end = self.add(want)  # units [end - want, end) are ours; past the last one, nothing
        return self.pending[end - want : min(end, len(self.pending))]

    def share(self) -> float:
        return self.rates().share()


@dataclass(frozen=True)
class RateSum:
    """What a rank knows of every rank's speed (inputs/s) when it claims: its own (None until
    it has measured one), the sum of those measured so far, and how many ranks measured them."""

    mine: float | None
    total: float
    measured: int
    world_size: int

    @classmethod
    def of(cls, rates: list[float | None], rank: int) -> RateSum:
        """From every rank's rate, by rank (None: not measured yet)."""
        known = [r for r in rates if r]
        return cls(rates[rank], sum(known), len(known), len(rates))

    def share(self) -> float:
        """This rank's part of the work still to hand out: its speed over all ranks' speeds. A
        rank that has measured nothing yet counts as fast as this one or the mean of those
        measured, whichever is faster (it may be); until this rank has measured itself, it
        asks for one unit."""
        if not self.mine:
            return 0.0
        measured = max(self.measured, 1)
        assumed = max(self.mine, self.total / measured)
        unmeasured = max(0, self.world_size - measured)
        return self.mine / max(self.mine, self.total + unmeasured * assumed)


def one_rank_rates() -> RateSum:
    """The rates of a world of one: its share is everything."""
    return RateSum(1.0, 1.0, 1, 1)


def local_counter() -> Callable[[int], int]:
    """The shared counter of a world of one."""
    value = 0

    def add(n: int) -> int:
        nonlocal value
        value += n
        return value

    return add
