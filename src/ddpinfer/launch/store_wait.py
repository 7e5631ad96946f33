"""Wait for every rank to finish a long step of its own (rank 0's preflight scan) on a counter in
the rendezvous store, not in a collective.

A collective gives up after ``run.timeout_s``, however alive the rank it waits for; a scan of a
billion rows outlasts the default 30 minutes. Here a rank waits as long as every rank is alive:
the liveness watch (heartbeats, ``launch/liveness.py``) is what finds a dead or stuck rank, and
``check_stop``, called while waiting, raises its notice.
"""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Callable
from typing import TypeVar

from ddpinfer.launch.env import LaunchEnv
from ddpinfer.launch.process_group import connect_store

T = TypeVar("T")

POLL_S = 0.5
_calls = itertools.count()
"""Every rank makes the same calls in the same order: the n-th has its own counter (a sweep
runs several jobs in one process)."""


def after_every_rank(
    env: LaunchEnv, name: str, step: Callable[[], T], check_stop: Callable[[], None]
) -> T:
    """Run ``step`` here, then return its result (or raise its error) once every rank has run
    its own ``step`` of this ``name``. The collective that follows (``agreed``) then finds
    every rank ready, so its timeout bounds only the exchange, not the step."""
    if not env.is_distributed:
        return step()
    store = connect_store(env, datetime.timedelta(seconds=60), "ready")
    key = f"{name}/{next(_calls)}"
    try:
        return step()
    finally:
        done = store.add(key, 1)
        while done < env.world_size:
            time.sleep(POLL_S)
            check_stop()
            done = store.add(key, 0)
