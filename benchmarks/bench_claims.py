"""Store operations and latency per claim: the summed rate (``WorkBoard``) against the per-rank
rate keys it replaced (a ``check`` and a ``get`` for every other rank on every claim).

- **Operations per claim**, simulated: W ranks' boards on one in-process TCPStore, every rank
  measured, one rank claiming windows through a counting wrapper, for W = 2, 100 and 1,000.
- **Latency per claim** against a real TCPStore holding 1,000 ranks' keys, with 1 and 4 client
  processes claiming at once.

    python benchmarks/bench_claims.py [--claims 200]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import time
from types import SimpleNamespace

import torch.distributed as dist

from ddpinfer.compute.work import WorkBoard
from ddpinfer.plan.work_units import RateSum, UnitClaims


class CountingStore:
    """Counts the operations (round trips) made through a store."""

    def __init__(self, store):
        self.store, self.ops = store, 0

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def counted(*args):
            self.ops += 1
            return method(*args)

        return counted


class PerRankBoard:
    """The protocol before: each rank's rate under its own key, all read on every claim."""

    def __init__(self, rank: int, world_size: int, store) -> None:
        self.rank, self.world_size, self.store, self.rate = rank, world_size, store, None

    def add(self, n: int) -> int:
        return self.store.add("claimed", n)

    def publish(self, rate: float) -> None:
        self.rate = rate
        self.store.set(f"rate/{self.rank}", repr(rate))

    def rates(self) -> RateSum:
        rates = []
        for r in range(self.world_size):
            if r == self.rank:
                rates.append(self.rate)
            else:
                has = self.store.check([f"rate/{r}"])
                rates.append(float(self.store.get(f"rate/{r}")) if has else None)
        return RateSum.of(rates, self.rank)


def summed_board(rank: int, world_size: int, store) -> WorkBoard:
    env = SimpleNamespace(rank=rank, world_size=world_size, is_distributed=True)
    return WorkBoard(env, store)


def store(port: int = 0, host: bool = True):
    timeout = datetime.timedelta(seconds=60)
    return dist.TCPStore("127.0.0.1", port, is_master=host, timeout=timeout, wait_for_workers=False)


def fill(kind, server, world_size: int) -> None:
    for rank in range(1, world_size):
        kind(rank, world_size, dist.PrefixStore(kind.__name__, server)).publish(100.0 + rank)


def ops_per_claim(kind, world_size: int, claims: int) -> float:
    server = store()
    fill(kind, server, world_size)
    counting = CountingStore(dist.PrefixStore(kind.__name__, server))
    board = kind(0, world_size, counting)
    board.publish(100.0)
    unit_claims = UnitClaims(list(range(10**8)), 64, 0, 64, board.add, board.rates)
    counting.ops = 0
    for _ in range(claims):
        unit_claims.next()
    return counting.ops / claims


def _client(kind, port: int, rank: int, claims: int, times) -> None:
    board = kind(rank, 1000, dist.PrefixStore(kind.__name__, store(port, host=False)))
    board.publish(100.0)
    unit_claims = UnitClaims(list(range(10**8)), 64, rank, 64, board.add, board.rates)
    began = time.perf_counter()
    for _ in range(claims):
        unit_claims.next()
    times.put((time.perf_counter() - began) / claims)


def latency_ms(kind, server, clients: int, claims: int) -> float:
    """Mean time per claim with ``clients`` processes claiming at once, as ranks do."""
    ctx = multiprocessing.get_context("fork")
    times = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(kind, server.port, r, claims, times))
        for r in range(clients)
    ]
    for p in procs:
        p.start()
    got = [times.get() for _ in procs]
    for p in procs:
        p.join()
    return 1000 * sum(got) / len(got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    print("store operations per claim (one rank claiming, every rank measured)")
    print(f"{'W':>6} {'per-rank keys':>14} {'summed rate':>12} {'ratio':>8}")
    for world_size in (2, 100, 1000):
        old = ops_per_claim(PerRankBoard, world_size, min(args.claims, 50))
        new = ops_per_claim(summed_board, world_size, args.claims)
        print(f"{world_size:>6} {old:>14.1f} {new:>12.1f} {old / new:>7.0f}x")
    server = store()
    for kind in (PerRankBoard, summed_board):
        fill(kind, server, 1000)
    print("\nclaim latency, real TCPStore holding 1,000 ranks' keys (ms per claim)")
    print(f"{'clients':>8} {'per-rank keys':>14} {'summed rate':>12} {'ratio':>8}")
    for clients in (1, 4):
        old = latency_ms(PerRankBoard, server, clients, max(5, args.claims // 20))
        new = latency_ms(summed_board, server, clients, args.claims)
        print(f"{clients:>8} {old:>14.2f} {new:>12.3f} {old / new:>7.0f}x")


if __name__ == "__main__":
    main()
