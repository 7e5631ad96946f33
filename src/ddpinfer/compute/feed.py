"""Keep the forward loop fed: windows are claimed, read and tokenized on a background thread.

The compute thread only runs batches. Claiming the next window waits until the current one is
nearly done (``request_next``), so a rank never holds work another rank could be doing. An error
on the thread surfaces on the compute thread at its next step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ddpinfer.compute.unit_tracker import WindowRows as Window

POLL_S = 0.2
DONE = object()
"""What ``WindowFeed.take`` returns once every unit has been handed out."""


class WindowFeed:
    """Windows produced by ``make(units)`` for each window of units ``claim()`` hands out."""

    def __init__(
        self,
        claim: Callable[[], list[int]],
        make: Callable[[list[int]], Window],
        check_stop: Callable[[], None],
    ) -> None:
        self._claim = claim
        self._make = make
        self._check_stop = check_stop
        self._ready: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._wanted = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._produce, name="ddpinfer-feed", daemon=True)
        self._prepare_s_per_row = 0.0
        self._last_rows = 1
        self._done = False

    @property
    def lead_s(self) -> float:
        """How long before the current window ends to ask for the next one: twice what
        preparing the last window took, scaled to its rows, plus a little."""
        return 0.05 + 2 * self._prepare_s_per_row * self._last_rows

    def __enter__(self) -> WindowFeed:
        self._wanted.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._wanted.set()

    def request_next(self) -> None:
        """Start claiming and preparing the next window now."""
        self._wanted.set()

    def _produce(self) -> None:
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._closed:
                    return
                units = self._claim()
                if not units:
                    self._put(None)
                    return
                began = time.perf_counter()
                window = self._make(units)
                self._last_rows = max(1, window.num_rows)
                self._prepare_s_per_row = (time.perf_counter() - began) / self._last_rows
                self._put(window)
        except BaseException as e:  # handed to the compute thread, which raises it
            self._put(e)

    def _put(self, item: Any) -> None:
        while not self._closed:
            try:
                self._ready.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Window]:
        while (window := self.take(block=True)) is not DONE:
            yield window  # type: ignore[misc]

    def take(self, block: bool) -> Window | None | object:
        """The next window; ``None`` if none is ready yet (only when not ``block``); ``DONE``
        when every unit is handed out. A stop is checked while waiting."""
        while True:
            try:
                item = self._ready.get(timeout=POLL_S) if block else self._ready.get_nowait()
            except queue.Empty:
                self._check_stop()
                if not block:
                    return None
                continue
            if item is None:
                self._done = True
                return DONE
            if isinstance(item, BaseException):
                raise item
            return item

    @property
    def done(self) -> bool:
        """Every unit has been handed out and taken."""
        return self._done
