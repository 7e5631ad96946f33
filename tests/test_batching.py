import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddpinfer.batching import (
    BATCH_OVERHEAD,
    BatchLimits,
    TokenBudget,
    longest_first,
    plan_batches,
)


@given(
    costs=st.lists(st.integers(1, 300), max_size=300),
    max_rows=st.integers(1, 64),
    max_tokens=st.integers(1, 4096),
)
def test_batches_cover_every_input_once_within_the_limits(costs, max_rows, max_tokens):
    batches = plan_batches(costs, BatchLimits(max_rows, max_tokens))
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        width = max(costs[i] for i in b)
        assert len(b) <= max_rows
        assert len(b) == 1 or len(b) * width <= max_tokens  # a too-wide input goes alone


def test_batches_are_length_sorted_and_tight():
    costs = [5, 100, 7, 100, 6, 99, 5, 8] * 40
    batches = plan_batches(costs, BatchLimits(256, 2000))
    real = sum(costs)
    padded = sum(len(b) * max(costs[i] for i in b) for b in batches)
    assert real / padded > 0.9
    widths = [max(costs[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)


def _computed(costs, batches, limits):
    """What a plan costs: padded tokens plus the per-batch overhead."""
    padded = sum(len(b) * max(costs[i] for i in b) for b in batches)
    return padded + len(batches) * limits.max_tokens * BATCH_OVERHEAD


@given(
    costs=st.lists(st.integers(1, 40), min_size=1, max_size=9),
    max_rows=st.integers(1, 9),
    max_tokens=st.integers(8, 200),
)
def test_the_cut_is_the_cheapest_of_all_cuts_of_the_sorted_inputs(costs, max_rows, max_tokens):
    limits = BatchLimits(max_rows, max_tokens)
    order = longest_first(costs)
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=len(costs) - 1):
        bounds = [0, *(i + 1 for i, b in enumerate(bits) if b), len(costs)]
        batches = [order[a:z] for a, z in zip(bounds, bounds[1:])]
        if all(
            len(b) == 1 or (len(b) <= max_rows and len(b) * costs[b[0]] <= max_tokens)
            for b in batches
        ):
            best = min(best, _computed(costs, batches, limits))
    assert _computed(costs, plan_batches(costs, limits), limits) == pytest.approx(best)


def test_batches_end_where_the_lengths_step_down():
    """Three length classes that fit the budget together in one batch each: a cut mixing two
    would pad dozens of tokens more than one extra forward pass costs."""
    costs = [30] * 20 + [20] * 30 + [10] * 40
    batches = plan_batches(costs, BatchLimits(256, 1024))
    assert [sorted({costs[i] for i in b}) for b in batches] == [[30], [20], [10]]


@given(lengths=st.lists(st.integers(1, 50), max_size=100))
def test_longest_first_is_a_stable_permutation(lengths):
    order = longest_first(lengths)
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    for a, b in zip(order, order[1:]):  # equal lengths keep input order
        assert lengths[a] > lengths[b] or a < b


def test_out_of_memory_shrinks_only_that_width_and_wider_then_grows_back(caplog):
    budget = TokenBudget(BatchLimits(max_rows=512, max_tokens=4096))
    assert budget.max_rows(64) == 64 and budget.max_rows(16) == 256
    with caplog.at_level(logging.WARNING):
        assert budget.out_of_memory(64, 64) == 32
    assert "out of memory at 64 inputs × 64 tokens" in caplog.text
    assert budget.max_rows(64) == 32 and budget.max_rows(200) == 10  # wider: shrunk too
    assert budget.max_rows(16) == 256  # narrower inputs keep their budget
    for _ in range(TokenBudget.GROW_AFTER):
        budget.fitted(64)
    assert budget.max_rows(64) == 40  # grows back by a quarter
    for _ in range(TokenBudget.GROW_AFTER * 4):
        budget.fitted(64)
    assert budget.max_rows(64) == 64  # and back to the full budget
