"""This rank's loop with a generation engine (``task.engine=vllm``): prompts stream into the
engine from claimed windows of work units, and each result is journaled the engine step its
request finishes.

There are no batches to plan: the engine schedules requests itself (continuous batching). The
loop keeps it full across unit and window boundaries, and never fuller than twice the requests
it runs at once: a window's rows wait in a queue, and after each step as many of them are made
into prompts (images decoded) and added as requests finished. Only the prompts in flight are in
memory, whatever the size of a window. A prompt that cannot be made (an image that does not
decode, a chat template that refuses the text) is that input's error; the rest runs. What each
step finishes goes to the window's journal and, as units complete, to their parts, as the
batched loop does; a stop between steps loses only the requests in flight.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpinfer import faults
from ddpinfer.compute.engines.vllm_engine import RequestRejected, VllmEngine
from ddpinfer.compute.feed import DONE, WindowFeed
from ddpinfer.compute.part_writer import PartWriter, guarded
from ddpinfer.compute.unit_tracker import UnitTracker, WindowKey, WindowRows
from ddpinfer.compute.windows import Throughput
from ddpinfer.compute.work import WorkBoard, claims, rows_reader
from ddpinfer.config import Config
from ddpinfer.launch import LaunchEnv, Watch
from ddpinfer.plan import Plan

log = logging.getLogger("ddpinfer")

QUEUED_BATCHES = 2
"""Requests kept queued or running in the engine, in batches of what it runs at once
(``max_num_seqs``): enough to refill its batch as requests finish while the next window is
prepared. No more, so that a rank claims no work it cannot start soon: the other ranks take it,
and a stop or a lost engine has less in flight."""
FINISHED = ("stop", "length")
"""Finish reasons of a request that generated its text (others: aborted by the engine)."""


@dataclass
class EngineTask:
    """task=generate or image_text through an engine: its prompts and the engine itself."""

    prompts: Any
    """``EnginePrompts``: each input's prompt, its decoding settings, the text of its tokens."""
    engine: VllmEngine
    device: torch.device
    window_rows: int | None = None


def stream_units(
    cfg: Config,
    env: LaunchEnv,
    run_dir: Path,
    plan: Plan,
    task: EngineTask,
    watch: Watch,
    on_batch: Callable[[int, int, int], None],
) -> tuple[list[Path], Throughput]:
    """Claim windows of work units until none are left and every request has finished; the
    counterpart of ``rank_loop.run_units``, with the same arguments and results."""
    board = WorkBoard(env)
    window_rows = min(cfg.batch.sort_rows, task.window_rows or cfg.batch.sort_rows)
    fault = faults.for_attempt(cfg.fault, env.attempt)
    read = rows_reader(plan)  # prompts are made as rows go into the engine
    busy = 0.0
    cap = QUEUED_BATCHES * task.engine.max_num_seqs
    with (
        PartWriter(
            run_dir, keep=plan.spec.keep, before_write=guarded(watch, fault, env.rank)
        ) as writer,
        WindowFeed(claims(plan, env, board, window_rows).next, read, watch.check_stop) as feed,
    ):
        streamer = Streamer(task, writer, on_batch)
        try:
            while True:
                while streamer.queued < cap and not feed.done:
                    window = feed.take(block=streamer.idle)
                    if window is None or window is DONE:
                        break
                    feed.request_next()
                    streamer.add(window)  # type: ignore[arg-type]
                streamer.top_up(cap)
                if streamer.idle and feed.done:
                    break
                if streamer.in_flight == 0:
                    continue  # every queued row failed its prompt: take the next window
                watch.before_batch()
                began = time.perf_counter()
                faults.before_batch(fault, streamer.in_flight, env.rank, streamer.stats.batches)
                streamer.step()
                busy += time.perf_counter() - began
                board.publish(streamer.stats.inputs / max(busy, 1e-9))
        finally:
            task.engine.shutdown()
    return writer.done, streamer.stats


def make_prompts(prompts: Any, rows: list[Any]) -> list[Any]:
    """Each row's prompt, or the exception that says why it has none: ``prompts.prepare`` in one
    call, and if that raises (a chat template refusing one text), row by row."""
    try:
        return prompts.prepare(rows)
    except Exception:
        made: list[Any] = []
        for row in rows:
            try:
                made.extend(prompts.prepare([row]))
            except Exception as e:
                made.append(RuntimeError(f"its prompt could not be made: {type(e).__name__}: {e}"))
        return made


class Streamer:
    """The requests in the engine, the rows queued for it, and the windows they came from: each
    finished request's text goes to its window's unit tracker; what a step finishes is journaled
    as one batch per window."""

    def __init__(self, task: EngineTask, writer: PartWriter, on_batch) -> None:
        self.prompts, self.engine = task.prompts, task.engine
        self.writer, self.on_batch = writer, on_batch
        self.stats = Throughput()
        self._windows: dict[WindowKey, WindowRows] = {}
        self._trackers: dict[WindowKey, UnitTracker] = {}
        self._left: dict[WindowKey, int] = {}
        self._queue: deque[tuple[int, int]] = deque()  # (window, position) not yet added
        self._requests: dict[str, tuple[int, int, int]] = {}  # id -> (window, position, tokens)
        self._journaled = 0

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    @property
    def queued(self) -> int:
        """Rows taken and not finished: in the engine, or waiting to go in."""
        return len(self._requests) + len(self._queue)

    @property
    def idle(self) -> bool:
        return self.queued == 0

    def add(self, window: WindowRows) -> None:
        """Take a window: its rows that cannot run are recorded, the others queued."""
        key = window.key
        errors = {p: row.error for p, row in enumerate(window.flat) if row.error}
        self._windows[key] = window
        tracker = self._trackers[key] = UnitTracker(window, errors)
        self._left[key] = window.num_rows - len(errors)
        if errors:
            self._journal(key, sorted(errors))
        for result in tracker.done_already():
            self.writer.submit(result)
        self._queue.extend((key, p) for p in range(window.num_rows) if p not in errors)
        self._finish(key, [])

    def top_up(self, cap: int) -> None:
        """Make prompts for queued rows and add them, until ``cap`` requests are in flight."""
        while self._queue and self.in_flight < cap:
            take = [
                self._queue.popleft() for _ in range(min(cap - self.in_flight, len(self._queue)))
            ]
            rows = [self._windows[key].flat[pos] for key, pos in take]
            failed: dict[int, list[int]] = {}
            made = make_prompts(self.prompts, rows)
            for (key, pos), row, prompt in zip(take, rows, made, strict=True):
                failed_prompt = isinstance(prompt, Exception)
                error = str(prompt) if failed_prompt else self._send(key, pos, row, prompt)
                if error is not None:
                    self._trackers[key].errors[pos] = error
                    failed.setdefault(key, []).append(pos)
            for key, positions in failed.items():
                self._finish(key, positions)

    def _send(self, key: WindowKey, pos: int, row: Any, prompt: Any) -> str | None:
        """Add one request; the reason the engine refused it, if it did."""
        request = f"{key}:{pos}"
        try:
            self.engine.add(request, prompt, self.prompts.sampling(row))
        except RequestRejected as e:
            return str(e)
        self._requests[request] = (key, pos, self.prompts.prompt_tokens(prompt))
        return None

    def step(self) -> None:
        began = time.perf_counter()
        finished = self.engine.step()
        self.stats.compute_seconds += time.perf_counter() - began
        self.stats.batches += 1
        by_window: dict[int, list[int]] = {}
        for done in finished:
            key, pos, prompt_tokens = self._requests.pop(done.request_id)
            tracker = self._trackers[key]
            if done.finish_reason in FINISHED:
                row = tracker.window.flat[pos]
                tracker.outputs[pos] = (self.prompts.columns(done, row), 0)
                self.stats.inputs += 1
                tokens = prompt_tokens + len(done.token_ids)
                self.stats.real_tokens += tokens
                self.stats.padded_tokens += tokens
            else:
                tracker.errors[pos] = f"the engine ended it: {done.finish_reason}"
            by_window.setdefault(key, []).append(pos)
        for key, positions in by_window.items():
            self._finish(key, positions)

    def _finish(self, key: WindowKey, positions: list[int]) -> None:
        """These rows of window ``key`` are done: journaled, and the units they complete written."""
        if not positions:
            if self._left[key] == 0:
                self._end(key)
            return
        self._journal(key, positions)
        for result in self._trackers[key].finish(positions):
            self.writer.submit(result)
        self._left[key] -= len(positions)
        if self._left[key] == 0:
            self._end(key)

    def _journal(self, key: WindowKey, positions: list[int]) -> None:
        result = self._trackers[key].batch_result(positions)
        rows = len(result.rows) + len(result.errors)
        self._journaled += rows
        log.debug("batch of %d input(s) done (%d this attempt)", rows, self._journaled)
        self.writer.submit_batch(key, result)
        self.on_batch(rows, len(result.errors), self.stats.real_tokens)

    def _end(self, key: WindowKey) -> None:
        self.writer.end_window(key)
        del self._trackers[key], self._left[key], self._windows[key]
