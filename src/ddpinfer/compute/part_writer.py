"""Finished work units encoded as Arrow and written as part files, on a background thread, so
the compute thread only runs batches. An error on the thread surfaces on the compute thread at
its next step."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from ddpinfer.compute.windows import UnitResult
from ddpinfer.parts import build_table, write_part

MAX_PENDING = 8
"""Finished units waiting to be written, at most."""


class PartWriter:
    """Encodes finished units as Arrow and writes their part files, off the compute thread;
    ``keep`` names the input fields (from ``Row.fields``) written beside the results;
    ``before_write`` runs before each part is written, and may refuse it by raising."""

    def __init__(
        self,
        run_dir: Path,
        on_written: Callable[[UnitResult], None] = lambda r: None,
        keep: tuple[str, ...] = (),
        before_write: Callable[[], None] = lambda: None,
    ):
        self.run_dir = run_dir
        self.keep = keep
        self.before_write = before_write
        self.on_written = on_written
        self.done: list[int] = []
        # Bounded: a slow or hung filesystem holds the compute thread back (and its stall clock
        # runs) instead of letting finished results pile up in memory.
        self._queue: queue.Queue[UnitResult | None] = queue.Queue(maxsize=MAX_PENDING)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="ddpinfer-writer", daemon=True)

    def __enter__(self) -> PartWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Finish writing what was submitted (finished work is kept, also on errors)."""
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self.check()

    def submit(self, result: UnitResult) -> None:
        self.check()
        self._queue.put(result)

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self) -> None:
        while (result := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                rows = [result.rows[i] for i in result.good]
                kept = {k: [r.fields[k] for r in rows] for k in self.keep}  # type: ignore[index]
                table = build_table(
                    [r.index for r in rows],
                    [r.id for r in rows],
                    result.columns,
                    result.errors,
                    kept,
                )
                self.before_write()  # raises when the job no longer owns the run directory
                write_part(self.run_dir, result.unit, table)
                self.done.append(result.unit)
                self.on_written(result)
            except BaseException as e:
                self._error = e
