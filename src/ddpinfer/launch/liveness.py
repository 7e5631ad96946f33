"""Heartbeats and failure notices through the rendezvous store, so a dead rank never hangs a run.

Ranks meet in no collective while they work, so nothing would notice a dead peer until the end.
A daemon thread on each rank bumps a heartbeat counter in the store; rank 0 watches everyone's
counters, the others watch rank 0's. A rank that fails posts its error; a rank silent for
``dead_after_s`` is posted as dead by rank 0. Every rank watches one counter of posted failures
and stops at its next batch, however long the batch in flight runs (it is kept); if the main
thread is stuck elsewhere (say, in a collective with the dead rank), the thread ends the process
itself after a grace period. Store traffic stays O(world) per heartbeat on rank 0's side and O(1)
on every other rank.

A heartbeat proves the process is alive, not that it gets anywhere, so each rank also watches
its own progress: the inference loop calls ``progress()`` after every batch, and a rank that
finishes no batch for ``stall_after_s`` (default: 10 x its slowest batch, at least 10 minutes)
reports itself as stalled. Ranks that finished and wait for the others give up when no rank has
finished a batch for run.stall_after_s (unset: 3 x their own stall limit, as the others' batches
may be slower). Heartbeats go on through the part transfer and the merge; a rank
that is done says so (``leave``) so that its silence is not taken for death.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Callable

import torch.distributed as dist

from ddpinfer.launch.env import LaunchEnv
from ddpinfer.launch.process_group import connect_store
from ddpinfer.launch.signal_cause import gone_peer, publish_process
from ddpinfer.launch.stopping import PeerFailed, Preempted, Reason, Stalled, end_process

log = logging.getLogger(__name__)

MIN_STALL_S, STALL_FACTOR, WAIT_FACTOR = 600.0, 10.0, 3.0
EXIT_MARGIN_S = 1.0
"""How long a lingering rank stays after the ranks it waited for have said they are leaving: a
rank says so just before it exits, and on a loaded machine its exit can come a moment later, after
this rank's own, which the launcher would then name as the first failure."""
PHASES = ("start", "preflight", "work", "done", "finish", "transfer", "merge")
"""Where a rank is in the run, in order: a rank that fails a collective looks here for the rank
that never reached it."""


def lost_store(error: BaseException) -> str:
    return (
        f"lost contact with the rendezvous store ({str(error).splitlines()[0][:200]}): rank 0 "
        "(or the launcher hosting the store) has stopped"
    )


SILENT = (Reason.STALLED, Reason.DEAD)
"""Notices whose message says itself what happened to the rank (``rank 3 stalled: ...``)."""


class Liveness:
    def __init__(
        self,
        env: LaunchEnv,
        heartbeat_s: float,
        dead_after_s: float,
        stall_after_s: float | None = None,
    ) -> None:
        self.env = env
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.stall_after_s = stall_after_s
        self.grace_s = max(2 * heartbeat_s, 5.0)
        self.failure: str | None = None
        self.failure_kind: Reason | None = None
        self._failed_at = 0.0
        self._own_failure = False
        self._progress_at: float | None = None  # None: no batch expected (before/after the loop)
        self._slowest = 0.0
        self._batches = self._published = 0
        self._named: set[int] = set()  # ranks this rank reported as failed (stalled, dead)
        self._dead: set[int] = set()
        self._phase = "start"
        self._stopping = False  # the main thread is handling a failure: it stops by itself
        self._signal_explained = False
        self._stop = threading.Event()
        # One store client per thread: the main thread posts and waits, the watcher polls.
        # One process has no store: an in-process one serves its own stall clock and notices.
        local = None if env.is_distributed else dist.HashStore()
        self._store = local or self._connect()
        self._watch_store = local or self._connect()
        self._thread = threading.Thread(target=self._watch, name="ddpinfer-liveness", daemon=True)

    def _connect(self) -> dist.Store:
        timeout = datetime.timedelta(seconds=max(30.0, self.dead_after_s))
        return connect_store(self.env, timeout, "liveness")

    def start(self) -> Liveness:
        self._store.add(f"hb/{self.env.rank}", 1)
        publish_process(self._store, self.env)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 5)

    # -- progress --------------------------------------------------------------------------

    def progress(self) -> None:
        """A batch has finished (or the loop starts): restart this rank's stall clock."""
        now = time.monotonic()
        if self._progress_at is not None:
            self._slowest = max(self._slowest, now - self._progress_at)
            self._batches += 1
        self._progress_at = now

    def idle(self) -> None:
        """No more batches on this rank: stop its stall clock."""
        self._progress_at = None

    def stall_limit(self) -> float:
        if self.stall_after_s is not None:
            return self.stall_after_s
        return max(MIN_STALL_S, STALL_FACTOR * self._slowest)

    def _wait_limit(self) -> float:
        # A backstop: a stalled rank reports itself. Other ranks' batches may be slower than
        # this rank's, so unless run.stall_after_s says how slow a batch may be, wait longer.
        return self.stall_after_s or WAIT_FACTOR * self.stall_limit()

    def leave(self) -> None:
        """This rank's process ends (done, or failed and said so): its heartbeats stop without
        it being taken for dead, and ranks waiting for it to go (``linger``) go on."""
        try:
            self._store.set(f"left/{self.env.rank}", "1")
        except Exception as e:
            log.debug("could not say this rank is leaving: %s", e)
        self.stop()

    def phase(self, name: str) -> None:
        """This rank has reached ``name`` (one of ``PHASES``); best effort."""
        self._phase = name
        try:
            self._store.set(f"phase/{self.env.rank}", name)
        except Exception as e:
            log.debug("could not publish this rank's phase: %s", e)

    # -- posting ---------------------------------------------------------------------------

    def post_failure(
        self,
        message: str,
        kind: Reason = Reason.ERROR,
        rank: int | None = None,
        store: dist.Store | None = None,
    ) -> None:
        """Tell every rank that ``rank`` (this one by default) failed; best effort. The watcher
        thread passes its own store client."""
        rank = self.env.rank if rank is None else rank
        store = store or self._store
        try:
            index = store.add("failures", 1)
            notice = {"rank": rank, "by": self.env.rank, "error": message, "kind": kind.value}
            store.set(f"failure/{index}", json.dumps(notice))
            if rank != self.env.rank:
                self._named.add(rank)
        except Exception as e:  # the store may be gone with the rank that hosted it
            log.warning("could not tell the other ranks about the failure: %s", e)

    def check(self) -> None:
        """Raise Stalled if this rank stalled, PeerFailed if another rank has failed."""
        if self.failure is None:
            return
        raise self._error()

    def poll_failures(self) -> None:
        """Read the failure notices now, from the calling thread (say, on a stop signal: the
        torchrun agent stops the survivors of a failed rank with SIGTERM, and they must report
        that rank, not a preemption)."""
        try:
            if self.failure is None:
                self._read_failures(self._store)
        except Exception as e:
            log.debug("could not read failure notices: %s", e)

    def explain_signal(self) -> None:
        """A stop signal came (once): read the failure notices, and with none, look for a peer
        that died (``signal_cause``: torchrun's agent stops the survivors of a dead worker with
        SIGTERM before run.dead_after_s passes). That rank is posted as dead, and this rank
        stops naming it, not as preempted."""
        if self._signal_explained:
            return
        self._signal_explained = True
        self.poll_failures()
        if self.failure is not None or not self.env.is_distributed:
            return
        try:
            found = gone_peer(self._store, self.env, self.heartbeat_s)
        except Exception as e:
            log.debug("could not check the other ranks on a stop signal: %s", e)
            return
        if found is not None:
            rank, how = found
            message = (
                f"stopped responding: {how} (killed, out of host memory, or its node is gone); "
                f"see logs/rank{rank}.log"
            )
            self._dead.add(rank)
            self._blame(rank, message, Reason.DEAD)

    def wait_all_done(self, check_stop: Callable[[], None]) -> None:
        """Block until every rank has finished its work; ``check_stop`` raises to stop waiting
        (a stop signal, or a peer's failure). Gives up, naming the ranks not done, when no rank
        has finished a batch for the stall limit."""
        self.phase("done")
        try:
            self._store.set(f"done/{self.env.rank}", "1")
            if self._store.add("done", 1) == self.env.world_size:
                self._store.set("all_done", "1")
            seen, seen_at, polled = -1, time.monotonic(), 0.0
            while not self._store.check(["all_done"]):
                check_stop()
                now = time.monotonic()
                if now - polled >= self.heartbeat_s:
                    polled, count = now, self._store.add("progress", 0)
                    if count != seen:
                        seen, seen_at = count, now
                    elif now - seen_at > self._wait_limit():
                        self._raise_no_progress(now - seen_at)
                        seen_at = now  # every rank turned out done: all_done comes next
                time.sleep(0.2)
        except (PeerFailed, Preempted):
            raise
        except Exception as e:  # the store went away with the rank or launcher hosting it
            check_stop()
            raise PeerFailed(lost_store(e), Reason.LOST_STORE) from None

    def _raise_no_progress(self, silent_s: float) -> None:
        waiting = [r for r in range(self.env.world_size) if not self._store.check([f"done/{r}"])]
        if not waiting:
            return
        message = (
            f"stalled: finished no batch for {silent_s:.0f}s while rank(s) "
            f"{', '.join(map(str, waiting))} had work left; see logs/rank{waiting[0]}.log"
        )
        self.post_failure(message, Reason.STALLED, rank=waiting[0])
        raise PeerFailed(f"rank {waiting[0]} {message}", Reason.STALLED)

    def linger(self, together: bool = False) -> None:
        """After a failure or a stop, before this process ends: wait for the ranks that must
        end first. The ranks this rank reported (stalled, dead) leave first, so that a launcher
        names them; on rank 0, every other rank leaves first, since they read the notices
        through its store and may still be journaling their batch in flight under the lock that
        rank 0 releases next. ``together`` (a stop signal): every rank finishes its batch in
        flight before any leaves, since torchrun's agent and srun end a job's other processes
        as soon as one exits. No time limit: a rank is waited for while its heartbeat goes on
        (a batch in flight may run long; one that runs past its stall limit ends its rank), and
        given up on after ``dead_after_s`` without one. The scheduler's own grace (SLURM's
        KillWait) is the outer bound."""
        self._stopping = True
        try:
            self._store.set(f"stopped/{self.env.rank}", "1")
        except Exception as e:
            log.debug("could not say this rank has stopped: %s", e)
        others = set(range(self.env.world_size)) - self._dead - {self.env.rank}
        leaving = others if self.env.is_main else others & self._named
        stopping = others - leaving if together else set()
        try:
            self._wait_for(leaving, stopping)
        except Exception as e:  # the store is gone: nobody is left to wait for
            log.debug("stopped waiting for the other ranks to leave: %s", e)
        if leaving & self._named:
            time.sleep(EXIT_MARGIN_S)

    def _ended(self, rank: int) -> bool:
        """Whether ``rank`` has stopped (its finished work is on disk) or left."""
        return self._store.check([f"stopped/{rank}"]) or self._store.check([f"left/{rank}"])

    def _wait_for(self, leaving: set[int], stopping: set[int]) -> None:
        """Until each rank of ``leaving`` has left and each of ``stopping`` has stopped (or
        left), or gone silent for ``dead_after_s``."""
        beats: dict[int, tuple[int, float]] = {}
        while leaving or stopping:
            now = time.monotonic()
            leaving = {r for r in leaving if not self._store.check([f"left/{r}"])}
            stopping = {r for r in stopping - leaving if not self._ended(r)}
            for rank in leaving | stopping:
                count = self._store.add(f"hb/{rank}", 0)
                if beats.get(rank, (None,))[0] != count:
                    beats[rank] = (count, now)
                elif now - beats[rank][1] > self.dead_after_s:
                    log.warning("rank %d stopped responding; not waiting for it", rank)
                    leaving.discard(rank)
                    stopping.discard(rank)
            time.sleep(0.2)

    def explain(self, error: BaseException) -> BaseException | None:
        """A collective failed or timed out: a peer closed its connection, or never came. Find
        the rank to blame — one that posted a failure, one whose heartbeat stopped, or one that
        is alive but never reached the step this rank waits at — tell the others, and return
        the error to raise instead; None when no rank can be blamed."""
        try:
            self._read_failures(self._store)
            if self.failure is None:
                self._find_culprit(error)
        except Exception as e:  # the store is gone, with the rank or launcher hosting it
            log.debug("could not find the rank a failed collective waited for: %s", e)
            self._fail(lost_store(e), Reason.LOST_STORE)
        if self.failure is None:
            return None
        return self._error()

    def _find_culprit(self, error: BaseException) -> None:
        others = [r for r in range(self.env.world_size) if r != self.env.rank]
        beats = {r: self._store.add(f"hb/{r}", 0) for r in others}
        deadline = time.monotonic() + 2 * self.heartbeat_s + 1  # a live rank beats meanwhile
        while time.monotonic() < deadline:
            self._read_failures(self._store)
            if self.failure is not None:
                return
            time.sleep(0.2)
        gone = {r for r in others if self._store.check([f"left/{r}"])}
        silent = [r for r in others if r not in gone and self._store.add(f"hb/{r}", 0) == beats[r]]
        cause = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        if silent:
            rank = silent[0]
            message = (
                f"stopped responding: its heartbeat stopped and a collective with it failed "
                f"({cause}); killed, out of host memory, or its node is gone? See "
                f"logs/rank{rank}.log"
            )
            self._dead.add(rank)
            self._blame(rank, message, Reason.DEAD)
            return
        behind = [r for r in others if r not in gone and self._phase_of(r) < self._phase_of()]
        if behind:
            rank = behind[0]
            message = (
                f"stalled: alive, but it never reached the {self._phase} step, where rank "
                f"{self.env.rank} waited for it ({cause}); see logs/rank{rank}.log"
            )
            self._blame(rank, message, Reason.STALLED)

    def _phase_of(self, rank: int | None = None) -> int:
        if rank is None:
            return PHASES.index(self._phase)
        name = (
            self._store.get(f"phase/{rank}").decode()
            if self._store.check([f"phase/{rank}"])
            else "start"
        )
        return PHASES.index(name) if name in PHASES else 0

    def _blame(self, rank: int, message: str, kind: Reason) -> None:
        self.post_failure(message, kind=kind, rank=rank)
        self._fail(f"rank {rank} {message}", kind)

    # -- watching --------------------------------------------------------------------------

    def _watch(self) -> None:
        watched = range(self.env.world_size) if self.env.is_main else [0]
        last = {r: (-1, time.monotonic()) for r in watched if r != self.env.rank}
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._watch_store.add(f"hb/{self.env.rank}", 1)
                if self._batches != self._published:  # one store call per heartbeat, at most
                    self._published = self._batches
                    self._watch_store.add("progress", 1)
                if self.failure is None:
                    self._check_own_progress()
                    self._read_failures(self._watch_store)
                    self._check_heartbeats(last)
            except Exception as e:
                self._fail(lost_store(e), Reason.LOST_STORE)
            if self.failure is not None and not self._stopping and self._main_thread_stuck():
                self._exit_stuck()

    def _main_thread_stuck(self) -> bool:
        """Whether the main thread has failed to stop by itself. It stops at its next batch
        boundary, so a batch in flight is waited for, however long it runs, up to this rank's
        stall limit (finished, it is kept); anywhere else (a collective, a read, a deadlock) it
        should have stopped within ``grace_s``."""
        now, batch_began = time.monotonic(), self._progress_at
        if self._own_failure or batch_began is None:
            return now - self._failed_at > self.grace_s
        return now - batch_began > self.stall_limit()

    def _exit_stuck(self) -> None:
        """The main thread did not stop by itself (stuck in a collective, a read, a deadlock, or
        a batch past its stall limit): end the process, with the same last line and exit code
        it would have given."""
        batch_began = self._progress_at
        if batch_began is not None and not self._own_failure:
            stall = self._stall_message(time.monotonic() - batch_began)
            error: BaseException = Stalled(f"rank {self.env.rank} {stall}, after: {self.failure}")
        else:
            waited = time.monotonic() - self._failed_at
            error = self._error(f" (this rank did not stop by itself in {waited:.0f}s)")
        try:
            self._watch_store.set(f"left/{self.env.rank}", "1")
        except Exception:
            pass
        end_process(self.env.rank, error)

    def _check_own_progress(self) -> None:
        started = self._progress_at
        if started is None:
            return
        silent = time.monotonic() - started
        if silent > self.stall_limit():
            message = self._stall_message(silent)
            self.post_failure(message, Reason.STALLED, store=self._watch_store)
            self._own_failure = True
            self._fail(f"rank {self.env.rank} {message}", Reason.STALLED)

    def _stall_message(self, silent: float) -> str:
        return (
            f"stalled: finished no batch for {silent:.0f}s (run.stall_after_s="
            f"{self.stall_limit():.0f}; a hung filesystem read, a deadlock in the tokenizer "
            f"or model?); see logs/rank{self.env.rank}.log"
        )

    def _error(self, note: str = "") -> BaseException:
        """What this rank stops with, for the failure it has seen."""
        if self._own_failure:
            return Stalled(f"{self.failure}{note}")
        return PeerFailed(f"{self.failure}{note}", self.failure_kind or Reason.ERROR)

    def _read_failures(self, store: dist.Store) -> None:
        """Every notice posted so far. The first one about another rank is the reason this rank
        stops; one about this rank, posted by another (it found this rank stalled, or stuck
        short of a collective), stops this rank as stalled: it exits first, with code 1, so
        that a launcher names it, not the rank that noticed."""
        for index in range(1, store.add("failures", 0) + 1):
            info = json.loads(store.get(f"failure/{index}"))
            kind = Reason.of_notice(info.get("kind"))
            if info["rank"] == self.env.rank:
                if info.get("by", self.env.rank) != self.env.rank and self.failure is None:
                    self._own_failure = True
                    self._fail(f"rank {self.env.rank} {info['error']}", kind)
                continue
            verb = "was stopped: " if kind.is_stop else "" if kind in SILENT else "failed: "
            self._fail(f"rank {info['rank']} {verb}{info['error']}", kind)

    def _check_heartbeats(self, last: dict[int, tuple[int, float]]) -> None:
        now = time.monotonic()
        for rank, (count, seen_at) in last.items():
            current = self._watch_store.add(f"hb/{rank}", 0)
            if current != count:
                last[rank] = (current, now)
            elif now - seen_at > self.dead_after_s:
                if self._watch_store.check([f"left/{rank}"]):  # done, not dead
                    del last[rank]
                    return
                message = (
                    f"stopped responding: no heartbeat for {now - seen_at:.0f}s (killed, "
                    f"out of host memory, or its node is gone); see logs/rank{rank}.log"
                )
                self._dead.add(rank)
                if self.env.is_main:
                    self.post_failure(message, Reason.DEAD, rank=rank, store=self._watch_store)
                self._fail(f"rank {rank} {message}", Reason.DEAD)
                return

    def _fail(self, message: str, kind: Reason) -> None:
        if self.failure is None:
            self.failure, self.failure_kind, self._failed_at = message, kind, time.monotonic()
            log.error("%s", message)
