"""Order inputs so that batches hold similar lengths and dynamic padding wastes little."""

from __future__ import annotations

from collections.abc import Sequence


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Positions into ``lengths``, longest input first.

    Longest first makes a batch that does not fit in memory fail at the start, not hours in.
    The sort is stable, so equal lengths keep input order and the batching is deterministic.
    """
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
