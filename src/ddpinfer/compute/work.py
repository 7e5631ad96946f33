"""This rank's share of the work: windows of units claimed from the counter all ranks share (sized
by the sum of the ranks' published speeds), and their rows read from where each window starts,
less those an earlier attempt finished."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from ddpinfer.compute.unit_tracker import WindowRows
from ddpinfer.inputs import Row, RowStream
from ddpinfer.launch import LaunchEnv, connect_store
from ddpinfer.plan import Plan, work_units

RATE_SCALE = 1000
"""Rates are summed in the store as integers: thousandths of an input per second."""
RATE_KEYS = ["rate_sum", "rates_measured"]


class WorkBoard:
    """What ranks share about the work, in the rendezvous store: the counter units are claimed
    from, and the sum of the ranks' measured speeds (inputs/s), from which windows are sized.

    The sum is kept with the store's atomic ``add``: a rank adds the change of its own rate
    (in thousandths) when it publishes, and one more rank to the count the first time. A
    claim then reads both counters in one ``multi_get``: a constant number of store
    operations per claim, whatever the number of ranks (``benchmarks/bench_claims.py``)."""

    def __init__(self, env: LaunchEnv, store=None) -> None:
        self.rank, self.world_size = env.rank, env.world_size
        self._rate: float | None = None
        self._published = 0  # this rank's share of rate_sum, in thousandths
        self._store = store
        self._local = work_units.local_counter()
        if store is None and env.is_distributed:
            self._store = connect_store(env, datetime.timedelta(seconds=60), "work")
        if self._store is not None:
            for key in RATE_KEYS:  # created, so that multi_get never waits for them
                self._store.add(key, 0)

    def add(self, n: int) -> int:
        return self._local(n) if self._store is None else self._store.add("claimed", n)

    def publish(self, rate: float) -> None:
        first = self._rate is None
        self._rate = rate
        if self._store is None:
            return
        scaled = max(1, round(rate * RATE_SCALE))
        if scaled != self._published:
            self._store.add("rate_sum", scaled - self._published)
            self._published = scaled
        if first:
            self._store.add("rates_measured", 1)

    def rates(self) -> work_units.RateSum:
        if self._store is None:
            return work_units.one_rank_rates()
        total, measured = (int(v) for v in self._store.multi_get(RATE_KEYS))
        return work_units.RateSum(self._rate, total / RATE_SCALE, measured, self.world_size)


def claims(plan: Plan, env: LaunchEnv, board: WorkBoard, window_rows: int) -> work_units.UnitClaims:
    return work_units.UnitClaims(
        plan.pending, plan.unit_size, env.rank, window_rows, board.add, board.rates
    )


def rows_reader(plan: Plan) -> Callable[[list[int]], WindowRows]:
    """The rows still to run of the given (ascending) units, each window read from where it
    starts (a seek, or a skip by row counts: rows between windows are not decoded); rows
    repeating an id marked bad."""
    stream = RowStream(plan.spec, plan.seek)

    def read(units: list[int]) -> WindowRows:
        ranges = [plan.units[u] for u in units]
        rows = stream.read(range(ranges[0].start, ranges[-1].stop))
        per_unit = []
        for unit, unit_rows in zip(units, work_units.split_rows(rows, ranges)):
            done = plan.done_rows.get(unit, ())
            per_unit.append([_mark_bad(r, plan.bad_rows) for r in unit_rows if r.index not in done])
        return WindowRows(units, per_unit, {u for u in units if u in plan.done_rows})

    return read


def _mark_bad(row: Row, bad_rows: dict[int, str]) -> Row:
    reason = bad_rows.get(row.index)
    return row if reason is None or row.error else dataclasses.replace(row, text="", error=reason)
