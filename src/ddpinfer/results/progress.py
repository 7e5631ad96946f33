"""One progress bar for the whole job on rank 0, fed by every rank through the rendezvous store.

Each rank adds its counts (inputs done, tokens) to its own keys in the store as each batch is
done: a store round trip per batch and no collective, so a slow rank never holds up the
others. A thread on rank 0 reads every rank's keys about once a second and
draws a tqdm bar on the console, or, without a terminal (or with ``log.progress=false``), logs
one progress line every ``log.progress_every_s``. Progress is never a reason to fail a run: a
store that cannot be reached only stops the display.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from ddpinfer.config import LogConfig
from ddpinfer.launch import LaunchEnv, connect_store

log = logging.getLogger("ddpinfer")

READ_EVERY_S = 1.0


class Counters(Protocol):
    def add(self, key: str, amount: int) -> int: ...


class LocalCounters:
    """The store's ``add`` for a world of one."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, amount: int) -> int:
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount
            return self._values[key]


def _connect(env: LaunchEnv, local: LocalCounters) -> Counters:
    if not env.is_distributed:
        return local
    return connect_store(env, datetime.timedelta(seconds=30), "progress")


@dataclass
class RankCounts:
    """What this rank has done in this attempt; also saved in its stats."""

    rows: int = 0
    errors: int = 0
    tokens: int = 0


class Reporter:
    """Every rank: add each finished unit's counts to this rank's keys."""

    def __init__(self, counters: Counters, rank: int) -> None:
        self.counters = counters
        self.rank = rank
        self.counts = RankCounts()
        self._broken = False

    def batch_done(self, rows: int, errors: int, tokens_so_far: int) -> None:
        """``tokens_so_far``: this rank's running total of real tokens."""
        added_tokens = tokens_so_far - self.counts.tokens
        self.counts.rows += rows
        self.counts.errors += errors
        self.counts.tokens = tokens_so_far
        if self._broken:
            return
        try:
            self.counters.add(f"inputs/{self.rank}", rows)
            self.counters.add(f"tokens/{self.rank}", added_tokens)
        except Exception as e:  # the store is gone: liveness reports why, progress just stops
            log.debug("progress: cannot reach the store (%s)", e)
            self._broken = True


@dataclass(frozen=True)
class Snapshot:
    done: int
    """Inputs done across all ranks, including those finished by earlier attempts."""
    total: int
    elapsed_s: float
    inputs: list[int]
    """Per rank, this attempt."""
    tokens: list[int]

    @property
    def inputs_per_s(self) -> float:
        return sum(self.inputs) / max(self.elapsed_s, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / max(self.elapsed_s, 1e-9)

    @property
    def eta_s(self) -> float | None:
        rate = self.inputs_per_s
        return (self.total - self.done) / rate if rate > 0 else None

    @property
    def slowest(self) -> tuple[int, float]:
        """The rank with the fewest inputs done, and its inputs/s."""
        rank = min(range(len(self.inputs)), key=lambda r: self.inputs[r])
        return rank, self.inputs[rank] / max(self.elapsed_s, 1e-9)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


def rates_text(s: Snapshot) -> str:
    """Tokens/s, and the slowest rank (with several)."""
    text = f"{s.tokens_per_s:,.0f} tokens/s"
    if len(s.inputs) > 1:
        rank, rate = s.slowest
        text += f", slowest rank {rank} at {rate:.1f} inputs/s"
    return text


def progress_line(s: Snapshot) -> str:
    percent = 100 * s.done / s.total if s.total else 100.0
    return (
        f"progress: {s.done}/{s.total} inputs ({percent:.0f}%), {s.inputs_per_s:.1f} inputs/s, "
        f"{rates_text(s)}, ETA {_duration(s.eta_s)}"
    )


class Display:
    """Rank 0: read every rank's counts about once a second; draw a bar or log a line."""

    def __init__(
        self, counters: Counters, world_size: int, total: int, initial: int, cfg: LogConfig
    ) -> None:
        self.counters = counters
        self.world_size = world_size
        self.total = total
        self.initial = initial
        self.every_s = READ_EVERY_S if self.shows_bar(cfg) else cfg.progress_every_s
        self.bar = _Bar(total, initial) if self.shows_bar(cfg) else None
        self._began = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ddpinfer-progress", daemon=True)

    @staticmethod
    def shows_bar(cfg: LogConfig) -> bool:
        return cfg.progress and sys.stderr.isatty()

    def start(self) -> Display:
        self._thread.start()
        return self

    def read(self) -> Snapshot:
        inputs = [self.counters.add(f"inputs/{r}", 0) for r in range(self.world_size)]
        tokens = [self.counters.add(f"tokens/{r}", 0) for r in range(self.world_size)]
        elapsed = time.perf_counter() - self._began
        return Snapshot(self.initial + sum(inputs), self.total, elapsed, inputs, tokens)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.every_s):
                self._show(self.read())
        except Exception as e:
            log.debug("progress: stopped reading the store (%s)", e)

    def _show(self, snapshot: Snapshot) -> None:
        if self.bar is not None:
            self.bar.show(snapshot)
        else:
            log.info(progress_line(snapshot))

    def stop(self, final: bool = True) -> None:
        """Stop the thread; with ``final``, show the last counts (the bar reaches the total)."""
        self._stop.set()
        self._thread.join(timeout=READ_EVERY_S + 5)
        try:
            if final and self.bar is not None:
                self.bar.show(self.read())
        except Exception as e:
            log.debug("progress: no final read (%s)", e)
        if self.bar is not None:
            self.bar.close()


class _Bar:
    """tqdm on stderr; console log lines are printed above it while it is shown."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm import tqdm

        wide = _terminal_columns() > 0  # a new pseudo-terminal can report 0 columns
        self.tqdm = tqdm(
            total=total,
            initial=initial,
            unit="input",
            file=sys.stderr,
            dynamic_ncols=wide,
            ncols=None if wide else 120,
            nrows=None if wide else 20,
            # the rate and ETA are the job's own (every rank's inputs since the start), not
            # tqdm's estimate from the bar's updates, which counts earlier attempts' work too
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.handlers = _redirect_console(self.tqdm)

    def show(self, s: Snapshot) -> None:
        self.tqdm.update(s.done - self.tqdm.n)
        self.tqdm.set_postfix_str(
            f"ETA {_duration(s.eta_s)}, {s.inputs_per_s:,.1f} inputs/s, {rates_text(s)}"
        )

    def close(self) -> None:
        self.tqdm.close()
        _restore_console(self.handlers)


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 0


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _redirect_console(bar) -> list[tuple[logging.Handler, logging.Handler]]:
    """Swap rank 0's console handler for one that writes above the bar (filters kept)."""
    root = logging.getLogger()
    swapped = []
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            replacement = _TqdmHandler(sys.stderr)
            replacement.setFormatter(handler.formatter)
            replacement.setLevel(handler.level)
            for f in handler.filters:
                replacement.addFilter(f)
            root.removeHandler(handler)
            root.addHandler(replacement)
            swapped.append((handler, replacement))
    return swapped


def _restore_console(swapped: list[tuple[logging.Handler, logging.Handler]]) -> None:
    root = logging.getLogger()
    for original, replacement in swapped:
        root.removeHandler(replacement)
        root.addHandler(original)


class Progress:
    """The run's progress: a reporter on every rank, the display on rank 0."""

    def __init__(self, env: LaunchEnv, total: int, initial: int, cfg: LogConfig) -> None:
        local = LocalCounters()
        self.reporter = Reporter(_connect(env, local), env.rank)
        self.display: Display | None = None
        if env.is_main:
            # its own store client: one per thread, as for the heartbeats
            self.display = Display(_connect(env, local), env.world_size, total, initial, cfg)
            self.display.start()

    def stop(self, final: bool = True) -> None:
        if self.display is not None:
            self.display.stop(final)
            self.display = None
