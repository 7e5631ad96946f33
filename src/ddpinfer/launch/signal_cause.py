"""Why a stop signal came, when no failure notice says: a preemption, or a launcher ending the
survivors of a rank that died.

torchrun's agent sends SIGTERM to every worker the moment one of them dies (``kill -9``, the
host's OOM killer), long before ``run.dead_after_s`` lets the heartbeats tell. Taken for a
preemption, the survivors would say "stopped by SIGTERM" and exit 75, and the dead rank would
be named nowhere. So a rank that gets a signal first looks for a peer that is gone: on its own
host, a peer whose process has ended without saying it was leaving; on other hosts (under
torchrun only, whose agents stop every node's workers), a peer whose heartbeat has stopped.
"""

from __future__ import annotations

import json
import os
import time

import torch.distributed as dist

from ddpinfer.launch.env import LaunchEnv


def publish_process(store: dist.Store, env: LaunchEnv) -> None:
    """Say where this rank's process is, for peers on its host to check it is alive."""
    store.set(f"proc/{env.rank}", json.dumps({"host": env.host, "pid": os.getpid()}))


def gone_peer(store: dist.Store, env: LaunchEnv, heartbeat_s: float) -> tuple[int, str] | None:
    """A peer that ended without leaving, and how it was found; None when every peer is alive
    (or left). Checks this host's peers at once; other hosts' for two heartbeats, under
    torchrun only (elsewhere a signal is a preemption, and that wait would only delay it)."""
    others = [r for r in range(env.world_size) if r != env.rank and not _left(store, r)]
    remote = []
    for rank in others:
        where = _process(store, rank)
        if where is None or where["host"] != env.host:
            remote.append(rank)
        elif not _alive(where["pid"]):
            return rank, f"its process (pid {where['pid']} on {env.host}) is gone"
    if not remote or env.launcher != "torchrun":
        return None
    beats = {r: store.add(f"hb/{r}", 0) for r in remote}
    time.sleep(2 * heartbeat_s + 1)  # a live rank beats meanwhile
    for rank in remote:
        if not _left(store, rank) and store.add(f"hb/{rank}", 0) == beats[rank]:
            return rank, f"its heartbeat stopped ({2 * heartbeat_s + 1:.0f}s without one)"
    return None


def _left(store: dist.Store, rank: int) -> bool:
    return store.check([f"left/{rank}"]) or store.check([f"stopped/{rank}"])


def _process(store: dist.Store, rank: int) -> dict | None:
    if not store.check([f"proc/{rank}"]):
        return None
    return json.loads(store.get(f"proc/{rank}"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
