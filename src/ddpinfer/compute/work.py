"""This rank's share of the work: windows of units claimed from the counter all ranks share (sized
by each rank's published speed), and their rows read in one pass over the input, less those an
earlier attempt finished."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from ddpinfer.compute.unit_tracker import WindowRows
from ddpinfer.inputs import Row, RowStream
from ddpinfer.launch import LaunchEnv, connect_store
from ddpinfer.plan import Plan, work_units


class WorkBoard:
    """What ranks share about the work, in the rendezvous store: the counter units are claimed
    from, and each rank's measured speed (inputs/s), from which windows are sized."""

    def __init__(self, env: LaunchEnv) -> None:
        self.rank, self.world_size = env.rank, env.world_size
        self._rate: float | None = None
        self._store = None
        self._local = work_units.local_counter()
        if env.is_distributed:
            self._store = connect_store(env, datetime.timedelta(seconds=60), "work")

    def add(self, n: int) -> int:
        return self._local(n) if self._store is None else self._store.add("claimed", n)

    def publish(self, rate: float) -> None:
        self._rate = rate
        if self._store is not None:
            self._store.set(f"rate/{self.rank}", repr(rate))

    def rates(self) -> list[float | None]:
        if self._store is None:
            return work_units.one_rank_rates()
        store, rates = self._store, []
        for r in range(self.world_size):
            if r == self.rank:
                rates.append(self._rate)
            else:
                rates.append(float(store.get(f"rate/{r}")) if store.check([f"rate/{r}"]) else None)
        return rates


def claims(plan: Plan, env: LaunchEnv, board: WorkBoard, window_rows: int) -> work_units.UnitClaims:
    return work_units.UnitClaims(
        plan.pending, plan.unit_size, env.rank, window_rows, board.add, board.rates
    )


def rows_reader(plan: Plan) -> Callable[[list[int]], WindowRows]:
    """The rows still to run of the given (ascending) units, read in one forward pass over the
    input across calls; rows repeating an id marked bad."""
    stream = RowStream(plan.spec)

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
