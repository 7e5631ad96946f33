"""Results to disk, on a background thread, so the compute thread only runs batches: each
finished batch appended to its window's journal (durable before the next is appended), each
finished unit written as its part (or a fragment of it), and a window's journal deleted once
every unit of the window is written. An error on the thread surfaces on the compute thread at
its next step."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpinfer import faults
from ddpinfer.compute.unit_tracker import BatchResult, UnitResult, WindowKey
from ddpinfer.config import FaultConfig
from ddpinfer.inputs import Row
from ddpinfer.launch import Watch
from ddpinfer.rundir.journal import Journal
from ddpinfer.rundir.parts import build_table, write_part

MAX_PENDING = 8
"""Results waiting to be written, at most: a slow or hung filesystem holds the compute thread
back (and its stall clock runs) instead of letting results pile up in memory."""


class PartWriter:
    """``keep`` names the input fields (from ``Row.fields``) written beside the results;
    ``before_write`` runs right before each write becomes visible (a part's rename, a journal
    record's append: the lock fence, checked as late as it can be), and may refuse it by
    raising."""

    def __init__(
        self,
        run_dir: Path,
        keep: tuple[str, ...] = (),
        before_write: Callable[[], None] = lambda: None,
    ):
        self.run_dir = run_dir
        self.keep = keep
        self.before_write = before_write
        self.done: list[Path] = []
        """The part and fragment files written, in order."""
        self.units_done: list[int] = []
        self._journals: dict[WindowKey, Journal] = {}
        self._queue: queue.Queue[tuple | None] = queue.Queue(maxsize=MAX_PENDING)
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
        """A unit whose rows are all done in its window."""
        self._put(("unit", result))

    def submit_batch(self, window: WindowKey, result: BatchResult) -> None:
        """A batch of ``window`` is done: into the window's journal."""
        self._put(("batch", window, result))

    def end_window(self, window: WindowKey) -> None:
        """Every unit of ``window`` was submitted: its journal goes once they are written."""
        self._put(("end", window))

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, item: tuple) -> None:
        self.check()
        self._queue.put(item)

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._handle(item)
            except BaseException as e:
                self._error = e

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "end":
            journal = self._journals.pop(item[1], None)
            if journal is not None:
                journal.delete()
            return
        if kind == "batch":
            _, window, result = item
            journal = self._journals.setdefault(window, Journal(self.run_dir))
            table = self._table(result.rows, result.columns, result.errors)
            journal.append(table, self.before_write)
            return
        result = item[1]
        rows = [result.rows[i] for i in result.good]
        tag = uuid.uuid4().hex if result.fragment else None
        table = self._table(rows, result.columns, result.errors)
        self.done.append(write_part(self.run_dir, result.unit, table, tag, self.before_write))
        self.units_done.append(result.unit)

    def _table(self, rows: list[Row], columns: dict[str, Any], errors: list[dict]):
        kept = {k: [r.fields[k] for r in rows] for k in self.keep}  # type: ignore[index]
        return build_table([r.index for r in rows], [r.id for r in rows], columns, errors, kept)


def guarded(watch: Watch, fault: FaultConfig, rank: int) -> Callable[[], None]:
    """A rank's check before each write becomes visible: a test's ``fault.write_hold_file``,
    then the lock fence."""

    def before_write() -> None:
        faults.before_write(fault, rank)
        watch.fence()

    return before_write
