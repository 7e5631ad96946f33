"""Cut length-sorted inputs into batches by a token budget, and adapt the budget to memory.

A batch costs its rows times its widest input: that is what the forward pass computes, padding
included. Sorting longest first makes neighbours similar, so little of that is padding, and a
batch that does not fit in memory fails at the start of a run, not hours in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Positions into ``lengths``, longest input first; stable, so ties keep input order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


TIGHT = 0.95
"""Share of real (not padding) tokens a batch keeps once it is large enough."""


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_tokens: int


def plan_batches(costs: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Positions into ``costs``, longest first, cut greedily: a batch holds at most
    ``max_rows`` rows and ``rows × widest <= max_tokens``; once it holds a quarter of the token
    budget (enough to keep the device busy), it is also cut before an input that would bring its
    share of real tokens below ``TIGHT``. An input wider than the budget gets a batch alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    width = real = 0
    for i in longest_first(costs):
        rows = len(current) + 1
        if current and (
            rows > limits.max_rows
            or rows * width > limits.max_tokens
            or (
                len(current) * width * 4 >= limits.max_tokens
                and real + costs[i] < TIGHT * rows * width
            )
        ):
            batches.append(current)
            current = []
        if not current:
            width, real = costs[i], 0
        current.append(i)
        real += costs[i]
    if current:
        batches.append(current)
    return batches


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

    def max_rows(self, width: int) -> int:
        """How many inputs of this width one batch may hold now."""
        cap = self._caps.get(self._width_class(width), self.limits.max_tokens)
        return max(1, min(self.limits.max_rows, cap // max(1, width)))

    def out_of_memory(self, width: int, rows: int) -> int:
        """Lower the budget after a batch of ``rows`` × ``width`` ran out of memory; returns
        the rows a batch of this width may hold from now on."""
        cap = max(width, rows * width // 2)
        for klass in range(self._width_class(width), 64):
            if self._caps.get(klass, self.limits.max_tokens) > cap:
                self._caps[klass] = cap
                self._fitted[klass] = 0
        allowed = self.max_rows(width)
        log.warning(
            "out of memory at %d inputs × %d tokens; inputs of this width or wider now go at "
            "most %d per batch",
            rows,
            width,
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
