"""A claim's cost in store operations, and the ranks' summed speeds, through a real TCPStore."""

import datetime
import multiprocessing
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from ddpinfer.compute.work import WorkBoard
from ddpinfer.plan.work_units import UnitClaims


class CountingStore:
    """A store that counts the operations (round trips) made through it."""

    def __init__(self, store):
        self.store, self.ops = store, 0

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def counted(*args):
            self.ops += 1
            return method(*args)

        return counted


def tcp_store(port=0, host=True, timeout_s=30):
    return dist.TCPStore(
        "127.0.0.1",
        port,
        is_master=host,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def board(store, rank, world_size):
    env = SimpleNamespace(rank=rank, world_size=world_size, is_distributed=True)
    return WorkBoard(env, store)


@pytest.mark.parametrize("world_size", [2, 1000])
def test_a_claim_costs_the_same_few_store_operations_at_any_world_size(world_size):
    server = tcp_store()
    for rank in range(1, min(world_size, 50)):  # other ranks measured
        board(server, rank, world_size).publish(100.0)
    counting = CountingStore(dist.PrefixStore("", server))
    mine = board(counting, 0, world_size)
    mine.publish(100.0)
    claims = UnitClaims(list(range(10**6)), 64, 0, 4096, mine.add, mine.rates)
    counting.ops = 0
    for _ in range(10):
        assert claims.next()
    assert counting.ops / 10 <= 3  # add(0), one multi_get of the rate sums, add(window)


def _publish_and_read(port, rank, rate, out):
    store = tcp_store(port, host=False)
    mine = board(store, rank, 3)
    mine.publish(rate)
    if store.add("published", 1) == 2:
        store.set("both published", "1")
    store.wait(["all read"])
    out.put((rank, mine.rates()))


def test_ranks_in_other_processes_read_the_sum_of_every_rate():
    server = tcp_store()
    ctx = multiprocessing.get_context("fork")  # no re-import: quick on a loaded machine
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_publish_and_read, args=(server.port, r, rate, out))
        for r, rate in ((1, 30.0), (2, 10.0))
    ]
    for p in procs:
        p.start()
    server.wait(["both published"], datetime.timedelta(seconds=120))
    server.set("all read", "1")
    seen = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert seen[1].total == seen[2].total == 40.0 and seen[1].measured == 2
    # rank 0 has not measured itself: both count it as fast as the faster of them or the mean
    assert seen[1].share() == pytest.approx(30 / 70) and seen[2].share() == pytest.approx(10 / 60)
    last = board(server, 0, 3)  # a rate that changes replaces the old one in the sum
    last.publish(10.0)
    last.publish(20.0)
    assert last.rates().total == 60.0 and last.rates().measured == 3
