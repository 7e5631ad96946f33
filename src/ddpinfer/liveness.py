"""Heartbeats and failure notices through the rendezvous store, so a dead rank never hangs a run.

Ranks meet in no collective while they work, so nothing would notice a dead peer until the end.
A daemon thread on each rank bumps a heartbeat counter in the store; rank 0 watches everyone's
counters, the others watch rank 0's. A rank that fails posts its error; a rank silent for
``dead_after_s`` is posted as dead by rank 0. Every rank watches one counter of posted failures
and stops at its next batch; if the main thread is stuck (say, in a collective with the dead
rank), the thread ends the process itself after a grace period. Store traffic stays O(world)
per heartbeat on rank 0's side and O(1) on every other rank.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable

import torch.distributed as dist

from ddpinfer.launch_env import LaunchEnv
from ddpinfer.process_group import connect_store
from ddpinfer.stopping import EXIT_PEER_FAILED, EXIT_PREEMPTED, PeerFailed, Preempted

log = logging.getLogger(__name__)

LOST_STORE = "rank 0 (or the launcher hosting the store) has stopped"


class Liveness:
    def __init__(self, env: LaunchEnv, heartbeat_s: float, dead_after_s: float) -> None:
        self.env = env
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.grace_s = max(2 * heartbeat_s, 5.0)
        self.failure: str | None = None
        self.failure_kind: str | None = None
        self._failed_at = 0.0
        self._stop = threading.Event()
        # One store client per thread: the main thread posts and waits, the watcher polls.
        self._store = self._connect()
        self._watch_store = self._connect()
        self._thread = threading.Thread(target=self._watch, name="ddpinfer-liveness", daemon=True)

    def _connect(self) -> dist.Store:
        timeout = datetime.timedelta(seconds=max(30.0, self.dead_after_s))
        return connect_store(self.env, timeout, "liveness")

    def start(self) -> Liveness:
        self._store.add(f"hb/{self.env.rank}", 1)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 5)

    # -- posting ---------------------------------------------------------------------------

    def post_failure(self, message: str, kind: str = "error", rank: int | None = None) -> None:
        """Tell every rank that ``rank`` (this one by default) failed; best effort."""
        rank = self.env.rank if rank is None else rank
        try:
            index = self._store.add("failures", 1)
            self._store.set(
                f"failure/{index}", json.dumps({"rank": rank, "error": message, "kind": kind})
            )
        except Exception as e:  # the store may be gone with the rank that hosted it
            log.warning("could not tell the other ranks about the failure: %s", e)

    def check(self) -> None:
        """Raise PeerFailed if another rank has failed."""
        if self.failure is not None:
            raise PeerFailed(self.failure, preempted=self.failure_kind == "preempted")

    def wait_all_done(self, check_stop: Callable[[], None]) -> None:
        """Block until every rank has finished its work; ``check_stop`` raises to stop waiting
        (a stop signal, or a peer's failure)."""
        try:
            if self._store.add("done", 1) == self.env.world_size:
                self._store.set("all_done", "1")
            while not self._store.check(["all_done"]):
                check_stop()
                time.sleep(0.2)
        except (PeerFailed, Preempted):
            raise
        except Exception as e:  # the store went away with the rank or launcher hosting it
            check_stop()
            raise PeerFailed(
                f"lost contact with the rendezvous store ({e}): {LOST_STORE}"
            ) from None

    def linger(self) -> None:
        """On rank 0 when it hosts the store: stay a moment after a failure, so the other ranks
        read the failure notice itself rather than finding the store gone."""
        if self.env.is_main and not self.env.store_hosted_by_agent:
            time.sleep(min(2 * self.heartbeat_s + 0.5, 15.0))

    # -- watching --------------------------------------------------------------------------

    def _watch(self) -> None:
        watched = range(self.env.world_size) if self.env.is_main else [0]
        last = {r: (-1, time.monotonic()) for r in watched if r != self.env.rank}
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._watch_store.add(f"hb/{self.env.rank}", 1)
                if self.failure is None:
                    self._read_failures()
                    self._check_heartbeats(last)
            except Exception as e:
                self._fail(
                    f"lost contact with the rendezvous store ({e}): {LOST_STORE}",
                    "error",
                )
            if self.failure is not None and time.monotonic() - self._failed_at > self.grace_s:
                log.error(
                    "stopping: %s (this rank did not stop by itself in %.0fs)",
                    self.failure,
                    self.grace_s,
                )
                logging.shutdown()
                os._exit(EXIT_PREEMPTED if self.failure_kind == "preempted" else EXIT_PEER_FAILED)

    def _read_failures(self) -> None:
        if self._watch_store.add("failures", 0) > 0:
            info = json.loads(self._watch_store.get("failure/1"))
            if info["rank"] != self.env.rank:
                self._fail(f"rank {info['rank']} failed: {info['error']}", info.get("kind"))

    def _check_heartbeats(self, last: dict[int, tuple[int, float]]) -> None:
        now = time.monotonic()
        for rank, (count, seen_at) in last.items():
            current = self._watch_store.add(f"hb/{rank}", 0)
            if current != count:
                last[rank] = (current, now)
            elif now - seen_at > self.dead_after_s:
                message = (
                    f"stopped responding: no heartbeat for {now - seen_at:.0f}s (killed, "
                    f"out of host memory, or its node is gone); see logs/rank{rank}.log"
                )
                if self.env.is_main:
                    self.post_failure(message, rank=rank)
                self._fail(f"rank {rank} {message}", "error")
                return

    def _fail(self, message: str, kind: str | None) -> None:
        if self.failure is None:
            self.failure, self.failure_kind, self._failed_at = message, kind, time.monotonic()
            log.error("%s", message)
