import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddpinfer.compute.batching import (
    BATCH_OVERHEAD,
    BatchLimits,
    TokenBudget,
    longest_first,
    plan_batches,
    plan_packed,
    split_to_fit,
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
    assert "out of memory at 64 inputs up to 64 tokens wide (4096 tokens)" in caplog.text
    assert "now hold at most 2048 tokens" in caplog.text
    assert budget.max_rows(64) == 32 and budget.max_rows(200) == 10  # wider: shrunk too
    assert budget.max_rows(16) == 256  # narrower inputs keep their budget
    for _ in range(TokenBudget.GROW_AFTER):
        budget.fitted(64)
    assert budget.max_rows(64) == 40  # grows back by a quarter
    for _ in range(TokenBudget.GROW_AFTER * 4):
        budget.fitted(64)
    assert budget.max_rows(64) == 64  # and back to the full budget


def test_a_packed_batch_that_ran_out_of_memory_halves_its_token_sum():
    budget = TokenBudget(BatchLimits(max_rows=512, max_tokens=4096))
    budget.out_of_memory(64, 100, tokens=3000)  # 100 inputs up to 64 wide: 3000 real tokens
    assert budget.max_tokens(64) == 1500 and budget.max_tokens(16) == 4096


@given(
    costs=st.lists(st.integers(1, 300), max_size=300),
    max_rows=st.integers(1, 64),
    max_tokens=st.integers(1, 4096),
)
def test_packed_batches_cover_every_input_once_full_up_to_the_budget(costs, max_rows, max_tokens):
    batches = plan_packed(costs, BatchLimits(max_rows, max_tokens))
    assert [i for b in batches for i in b] == longest_first(costs)  # sorted, each input once
    for b, after in zip(batches, [*batches[1:], None]):
        tokens = sum(costs[i] for i in b)
        assert len(b) <= max_rows
        assert len(b) == 1 or tokens <= max_tokens  # an input over the budget goes alone
        if after:  # full: the next input did not fit
            assert len(b) == max_rows or tokens + costs[after[0]] > max_tokens


@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=60).map(
        lambda c: sorted(c, reverse=True)
    ),
    max_rows=st.integers(1, 20),
    max_tokens=st.integers(1, 800),
    packed=st.booleans(),
)
def test_a_batch_split_to_fit_has_pieces_within_the_budget(costs, max_rows, max_tokens, packed):
    starts = split_to_fit(costs, max_rows, max_tokens, packed)
    assert starts[0] == 0 and starts == sorted(set(starts))
    for a, z in zip(starts, [*starts[1:], len(costs)]):
        piece = costs[a:z]
        tokens = sum(piece) if packed else len(piece) * piece[0]
        assert len(piece) == 1 or (len(piece) <= max_rows and tokens <= max_tokens)
        if z < len(costs):  # no piece is cut shorter than it had to be
            longer = costs[a : z + 1]
            grown = sum(longer) if packed else len(longer) * longer[0]
            assert len(longer) > max_rows or grown > max_tokens
