from hypothesis import given
from hypothesis import strategies as st

from ddpinfer.batching import longest_first
from ddpinfer.work_units import assign, auto_unit_size, plan_units, split_rows


@given(
    num_rows=st.integers(0, 5000),
    unit_size=st.one_of(st.none(), st.integers(1, 700)),
    world_size=st.integers(1, 8),
)
def test_every_row_goes_to_exactly_one_rank(num_rows, unit_size, world_size):
    units = plan_units(num_rows, unit_size)
    rows = []
    for rank in range(world_size):
        mine = assign(len(units), rank, world_size)
        for unit in (units[i] for i in mine):
            rows.extend(unit)
    assert sorted(rows) == list(range(num_rows))  # complete, disjoint, no duplicates
    assert len(rows) == len(set(rows))


@given(num_items=st.integers(0, 1000), world_size=st.integers(1, 8))
def test_shares_are_contiguous_and_balanced(num_items, world_size):
    shares = [assign(num_items, r, world_size) for r in range(world_size)]
    assert [s.start for s in shares[1:]] == [s.stop for s in shares[:-1]]
    assert shares[0].start == 0 and shares[-1].stop == num_items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_unit_boundaries_do_not_depend_on_world_size():
    # Units are what resume keys on, so they must follow from the rows alone.
    assert plan_units(100, 16) == [range(i, min(i + 16, 100)) for i in range(0, 100, 16)]
    assert auto_unit_size(10) == 16 and auto_unit_size(10**9) == 4096


def test_fewer_units_than_ranks_leaves_ranks_idle():
    assert [len(assign(2, r, 4)) for r in range(4)] == [1, 1, 0, 0]


def test_split_rows_skips_rows_between_units():
    units = [range(2, 4), range(6, 9)]
    assert list(split_rows(iter(range(2, 9)), units)) == [[2, 3], [6, 7, 8]]
    assert list(split_rows(iter([]), [])) == []


@given(lengths=st.lists(st.integers(1, 50), max_size=100))
def test_longest_first_is_a_stable_permutation(lengths):
    order = longest_first(lengths)
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    for a, b in zip(order, order[1:]):  # equal lengths keep input order
        assert lengths[a] > lengths[b] or a < b
