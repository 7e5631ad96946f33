"""Form batches of similar length so that dynamic padding wastes little compute."""

from __future__ import annotations

from collections.abc import Sequence


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions into ``lengths`` grouped into batches, longest inputs first.

    Longest first makes a batch that does not fit in memory fail at the start, not hours in.
    The sort is stable, so equal lengths keep input order and the batching is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
