"""A window's journal: every batch's results on disk (fsynced) the moment the batch is done.

Inputs are sorted by length across a whole window, so a work unit's part file comes only near
the window's end. Until then, the journal holds what the window has computed: one mini-part per
finished batch (the part format of ``parts``: ``row``, ``id``, the task's columns, the batch's
errors in the metadata), each an Arrow IPC stream of its own, appended to
``parts/journal-<token>.arrows``. A stop, a crash or a lost node loses only the batches in flight.
Once every unit of the window has its part, the journal is deleted. A journal left by an attempt
that ended early is turned into fragments of its units by the next attempt (``salvage``). Every
batch carries its checksum (``checksums``): a tail cut short or zeroed by the crash, or a batch
whose bytes changed, is left out and its rows are computed again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ddpinfer.rundir.atomic import fsync_dir
from ddpinfer.rundir.checksums import framed, records
from ddpinfer.rundir.parts import (
    ERRORS_KEY,
    combine_parts,
    fragment_path,
    parts_dir,
    read_errors,
    write_table,
)

log = logging.getLogger("ddpinfer")

JOURNAL_NAME = re.compile(r"^journal-([0-9a-f]{32})\.arrows$")


class Journal:
    """One window's journal, opened at its first batch."""

    def __init__(self, run_dir: Path) -> None:
        self.token = uuid.uuid4().hex
        self.path = parts_dir(run_dir) / f"journal-{self.token}.arrows"
        self._file = None

    def append(self, table: pa.Table, before_write: Callable[[], None] | None = None) -> None:
        """Add one batch's mini-part, and make it durable before returning (``before_write``
        runs once the record is prepared, right before a byte of it is written, and may refuse
        it by raising)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        payload = sink.getvalue()
        record = framed(payload) + payload.to_pybytes()
        if before_write is not None:
            before_write()
        new = self._file is None
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
        self._file.write(record)
        self._file.flush()
        os.fsync(self._file.fileno())
        if new:  # the journal's name, too, is on disk before the batch counts as kept
            fsync_dir(self.path.parent)

    def delete(self) -> None:
        """Every unit of the window has its part: the journal says nothing more."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


def journals(run_dir: Path) -> list[Path]:
    folder = parts_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if JOURNAL_NAME.match(p.name))


def read_journal(path: Path) -> Iterator[pa.Table]:
    """The journal's mini-parts whose checksums match, in order. One that does not is left
    out, and the log names the file; a record cut short or damaged in its header ends it (a
    crash mid-write: nothing after it can be found)."""
    with pa.memory_map(str(path)) as source:
        data = source.read_buffer()
    for offset, payload, why in records(data):
        if payload is None:
            log.warning("%s: byte %d: %s: recomputing its rows", path, offset, why)
            continue
        try:
            yield pa.ipc.open_stream(payload).read_all()
        except (OSError, pa.ArrowException) as e:  # checksum right, bytes wrong: a bug
            log.warning("%s: byte %d: cannot be read (%s): recomputing its rows", path, offset, e)


def salvage(
    run_dir: Path, unit_size: int, skip: set[int], held: dict[int, set[int]]
) -> dict[int, set[int]]:
    """Turn every journal into fragments: one file per unit it holds new rows of, named after
    the journal. Left out: the units in ``skip`` (whole already, or to be recomputed), and the
    rows ``held`` already holds, by unit (a journal outlives the units of its window that were
    written as parts or fragments before the window ended); ``held`` grows by what is written.
    A unit that has a fragment of this journal already was salvaged from it before a crash:
    left as it is. Deletes the journals. Returns the rows salvaged, by unit."""
    salvaged: dict[int, set[int]] = {}
    for path in journals(run_dir):
        token = JOURNAL_NAME.match(path.name).group(1)  # type: ignore[union-attr]
        by_unit: dict[int, list[pa.Table]] = {}
        for table in read_journal(path):
            for unit, piece in _by_unit(table, unit_size):
                by_unit.setdefault(unit, []).append(piece)
        for unit, pieces in sorted(by_unit.items()):
            target = fragment_path(run_dir, unit, token)
            if unit in skip or target.exists():
                continue
            seen = held.setdefault(unit, set())
            before = set(seen)
            kept = [_without_rows(piece, seen) for piece in pieces]
            if seen != before:
                write_table(target, combine_parts(kept))
                salvaged.setdefault(unit, set()).update(seen - before)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    return salvaged


def _by_unit(table: pa.Table, unit_size: int) -> Iterator[tuple[int, pa.Table]]:
    """A mini-part cut by unit, each piece with its own rows' errors."""
    errors: dict[int, list[dict]] = {}
    for error in read_errors(table):
        errors.setdefault(error["row"] // unit_size, []).append(error)
    units = table.column("row").to_numpy() // unit_size
    for unit in sorted(set(np.unique(units).tolist()) | set(errors)):
        piece = table.filter(pa.array(units == unit))
        metadata = {**(table.schema.metadata or {}), ERRORS_KEY: _dumps(errors.get(unit, []))}
        yield unit, piece.replace_schema_metadata(metadata)


def _without_rows(piece: pa.Table, seen: set[int]) -> pa.Table:
    """``piece`` without the rows (results and errors) in ``seen``, which its rows join."""
    rows = piece.column("row")
    if seen:
        piece = piece.filter(
            pc.invert(pc.is_in(rows, value_set=pa.array(sorted(seen), pa.int64())))
        )
    fresh_rows = piece.column("row").to_pylist()
    errors = [e for e in read_errors(piece) if e["row"] not in seen]
    seen.update(fresh_rows)
    seen.update(e["row"] for e in errors)
    metadata = {**(piece.schema.metadata or {}), ERRORS_KEY: _dumps(errors)}
    return piece.replace_schema_metadata(metadata)


def _dumps(errors: list[dict]) -> bytes:
    return json.dumps(errors, ensure_ascii=False).encode()
