import threading

from hypothesis import given
from hypothesis import strategies as st

from ddpinfer.plan.work_units import (
    RateSum,
    UnitClaims,
    auto_unit_size,
    local_counter,
    plan_units,
    split_rows,
)


def even(world_size):
    """Every rank measured, all equally fast."""
    return lambda: [1.0] * world_size


def seen_by(rank, rates):
    """What ``rank`` reads of the ranks' ``rates()`` (a list by rank) when it claims."""
    return lambda: RateSum.of(rates(), rank)


def claim_all(pending, unit_size, world_size, max_rows, ranks_in_turn, rates=None):
    """Windows claimed by ranks taking turns as given, from one shared counter."""
    counter = local_counter()
    rates = rates or even(world_size)
    claims = [
        UnitClaims(pending, unit_size, r, max_rows, counter, seen_by(r, rates))
        for r in range(world_size)
    ]
    windows = {r: [] for r in set(ranks_in_turn)}
    for r in ranks_in_turn:
        windows[r].append(claims[r].next())
    return windows


@given(
    num_units=st.integers(0, 300),
    world_size=st.integers(1, 8),
    max_rows=st.integers(1, 5000),
    turns=st.lists(st.integers(0, 7), min_size=1, max_size=400),
)
def test_every_pending_unit_is_claimed_exactly_once(num_units, world_size, max_rows, turns):
    pending = [u for u in range(num_units) if u % 7 != 3]  # some units were done earlier
    turns = [t % world_size for t in turns] + list(range(world_size)) * (num_units + 1)
    windows = claim_all(pending, 64, world_size, max_rows, turns)
    claimed = [u for ws in windows.values() for w in ws for u in w]
    assert sorted(claimed) == pending  # complete, disjoint
    for ws in windows.values():
        for w in ws:
            assert w == sorted(w) and len(w) <= max(1, max_rows // 64)


def test_windows_shrink_to_single_units_at_the_end():
    windows = claim_all(list(range(64)), 64, 2, 100_000, [0, 1] * 40)
    sizes = [len(w) for r in (0, 1) for w in windows[r] if w]
    assert max(sizes) == 16  # a quarter of what is left, with two ranks
    assert sorted(sizes)[:4] == [1, 1, 1, 1]
    assert sum(sizes) == 64


def test_concurrent_claims_from_threads_never_overlap():
    lock = threading.Lock()
    value = 0

    def add(n):
        nonlocal value
        with lock:
            value += n
            return value

    pending = list(range(500))
    got: list[list[int]] = [[] for _ in range(4)]

    def worker(rank):
        claims = UnitClaims(pending, 64, rank, 4096, add, seen_by(rank, even(4)))
        while window := claims.next():
            got[rank].extend(window)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(u for g in got for u in g) == pending


def test_unit_boundaries_do_not_depend_on_world_size():
    # Units are what resume keys on, so they must follow from the rows alone.
    assert plan_units(100, 16) == [range(i, min(i + 16, 100)) for i in range(0, 100, 16)]
    assert auto_unit_size(10) == 64 and auto_unit_size(10**9) == 4096
    assert auto_unit_size(4096) == 64 and auto_unit_size(100_000) == 512


def test_split_rows_skips_rows_between_units():
    units = [range(2, 4), range(6, 9)]
    assert list(split_rows(iter(range(2, 9)), units)) == [[2, 3], [6, 7, 8]]
    assert list(split_rows(iter([]), [])) == []


def test_windows_follow_each_ranks_measured_speed():
    pending = list(range(110))
    # rank 1 is 10x slower: each window is its share of half of what is left
    windows = claim_all(pending, 64, 2, 10**6, [1, 0], rates=lambda: [10.0, 1.0])
    assert len(windows[1][0]) == 5 and len(windows[0][0]) == 48  # 1/11 and 10/11 of half
    # unmeasured: one unit, and other unmeasured ranks count as the fastest measured
    assert claim_all(pending, 64, 2, 10**6, [0], rates=lambda: [None, 3.0])[0] == [[0]]
    halves = claim_all(pending, 64, 2, 10**6, [1], rates=lambda: [None, 3.0])
    assert len(halves[1][0]) == 28  # counted as fast as itself: a quarter of 110
