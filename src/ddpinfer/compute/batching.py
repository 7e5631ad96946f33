"""Cut length-sorted inputs into batches by a token budget, and adapt the budget to memory.

A batch costs its rows times its widest input: that is what the forward pass computes, padding
included. Sorting longest first makes neighbours similar, so little of that is padding, and a
batch that does not fit in memory fails at the start of a run, not hours in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Positions into ``lengths``, longest input first; stable, so ties keep input order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


BATCH_OVERHEAD = 1 / 32
"""A forward pass's fixed cost, as a share of the token budget: what one more batch costs in
padded tokens. Measured for the default model on one CPU thread (about 32 tokens' worth of
compute per call at the 1024-token default); see benchmarks/bench_throughput.py."""


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int


def plan_batches(costs: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Positions into ``costs``, longest first, cut into batches of at most ``max_rows`` rows
    with ``rows × widest <= max_tokens`` (an input wider than the budget goes alone).

    Of all such cuts of the sorted inputs, the one with the least computed tokens plus
    ``BATCH_OVERHEAD × max_tokens`` per batch (dynamic programming over the cut points): the
    padding a greedy cut leaves where lengths change is traded against one more forward pass,
    so batches end where the lengths step down and stay large where they do not."""
    order = longest_first(costs)
    n = len(order)
    if n == 0:
        return []
    widths = np.array([costs[i] for i in order], dtype=np.int64)
    per_batch = limits.max_tokens * BATCH_OVERHEAD
    best = np.zeros(n + 1)  # best[i]: the cost of batching inputs i.. (sorted) optimally
    cut = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        rows = min(limits.max_rows, limits.max_tokens // max(1, int(widths[i])), n - i)
        ends = np.arange(i + 1, i + max(1, rows) + 1)  # a batch [i, end) is widths[i] wide
        total = best[ends] + (ends - i) * widths[i] + per_batch
        k = int(np.argmin(total))
        best[i], cut[i] = total[k], ends[k]
    batches, i = [], 0
    while i < n:
        batches.append(order[i : cut[i]])
        i = int(cut[i])
    return batches


def plan_packed(costs: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Positions into ``costs``, longest first, cut into packed batches: at most ``max_rows``
    inputs whose costs sum to at most ``max_tokens`` (an input over the budget goes alone).
    Packed batches have no padding, so filling each one up is the cheapest cut."""
    batches: list[list[int]] = []
    tokens = 0
    for i in longest_first(costs):
        fits = tokens + costs[i] <= limits.max_tokens
        if batches and len(batches[-1]) < limits.max_rows and fits:
            batches[-1].append(i)
            tokens += costs[i]
        else:
            batches.append([i])
            tokens = costs[i]
    return batches


def split_to_fit(costs: Sequence[int], max_rows: int, max_tokens: int, packed: bool) -> list[int]:
    """Where to cut a longest-first batch so that each piece fits: the start of each piece."""
    starts, tokens, width = [], 0, 0
    for i, cost in enumerate(costs):
        rows = i - starts[-1] + 1 if starts else 1
        if starts:
            grown = tokens + cost if packed else rows * width
            if rows <= max_rows and grown <= max_tokens:
                tokens = grown
                continue
        starts.append(i)
        tokens = width = cost
    return starts


class TokenBudget:
    """The padded-token budget per forward pass, by width class (powers of two).

    An out-of-memory error lowers the budget of its width class and of every wider one (wider
    inputs need at least as much memory per token), never of narrower ones; after
    ``GROW_AFTER`` batches of a class fit, its budget grows back by a quarter, up to the limit.
    """

    GROW_AFTER = 16

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._caps: dict[int, int] = {}
        self._fitted: dict[int, int] = {}

    @staticmethod
    def _width_class(width: int) -> int:
        return max(1, width).bit_length()

    def max_tokens(self, width: int) -> int:
        """The token budget now of a batch whose widest input is ``width`` wide."""
        return self._caps.get(self._width_class(width), self.limits.max_tokens)

    def max_rows(self, width: int) -> int:
        """How many inputs of this width one padded batch may hold now."""
        return max(1, min(self.limits.max_rows, self.max_tokens(width) // max(1, width)))

    def out_of_memory(self, width: int, rows: int, tokens: int | None = None) -> int:
        """Lower the budget after a batch of ``rows`` inputs at most ``width`` wide ran out of
        memory (``tokens``: what it computed, if not ``rows × width``: a packed batch's sum);
        returns the rows a padded batch of this width may hold from now on."""
        cap = max(width, (rows * width if tokens is None else tokens) // 2)
        for klass in range(self._width_class(width), 64):
            if self._caps.get(klass, self.limits.max_tokens) > cap:
                self._caps[klass] = cap
                self._fitted[klass] = 0
        allowed = self.max_rows(width)
        log.warning(
            "out of memory at %d inputs up to %d tokens wide (%d tokens); batches of inputs this "
            "wide or wider now hold at most %d tokens (%d inputs padded)",
            rows,
            width,
            rows * width if tokens is None else tokens,
            self.max_tokens(width),
            allowed,
        )
        return allowed

    def fitted(self, width: int) -> None:
        klass = self._width_class(width)
        if klass not in self._caps:
            return
        self._fitted[klass] = self._fitted.get(klass, 0) + 1
        if self._fitted[klass] >= self.GROW_AFTER:
            self._fitted[klass] = 0
            grown = self._caps[klass] + max(1, self._caps[klass] // 4)
            if grown >= self.limits.max_tokens:
                del self._caps[klass]
            else:
                self._caps[klass] = grown
