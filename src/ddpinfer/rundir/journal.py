"""A window's journal: every batch's results on disk (fsynced) the moment the batch is done.

Inputs are sorted by length across a whole window, so a work unit's part file comes only near
the window's end. Until then, the journal holds what the window has computed: one mini-part per
finished batch (the part format of ``parts``: ``row``, ``id``, the task's columns, the batch's
errors in the metadata), each an Arrow IPC stream of its own, appended to
``parts/journal-<token>.arrows``. A stop, a crash or a lost node loses only the batches in flight.
Once every unit of the window has its part, the journal is deleted. A journal left by an attempt
that ended early is turned into fragments of its units by the next attempt (``salvage``); a tail
cut short by the crash is left out.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from ddpinfer.rundir.parts import (
    ERRORS_KEY,
    combine_parts,
    fragment_path,
    parts_dir,
    read_errors,
    write_table,
)

JOURNAL_NAME = re.compile(r"^journal-([0-9a-f]{32})\.arrows$")


class Journal:
    """One window's journal, opened at its first batch."""

    def __init__(self, run_dir: Path) -> None:
        self.token = uuid.uuid4().hex
        self.path = parts_dir(run_dir) / f"journal-{self.token}.arrows"
        self._file = None

    def append(self, table: pa.Table) -> None:
        """Add one batch's mini-part, and make it durable before returning."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        self._file.write(sink.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

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
    """The journal's mini-parts, in order, up to the first one cut short (a crash mid-write)."""
    with pa.memory_map(str(path)) as source:
        while source.tell() < source.size():
            try:
                table = pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowException):
                return
            yield table


def salvage(run_dir: Path, unit_size: int, skip: set[int]) -> dict[int, list[Path]]:
    """Turn every journal into fragments: one file per unit it holds rows of (not for the units
    in ``skip``, whole already), named after the journal, so that salvaging one journal twice
    (a crash in between) writes the same files. Deletes the journals. Returns the fragments
    written, by unit."""
    written: dict[int, list[Path]] = {}
    for path in journals(run_dir):
        token = JOURNAL_NAME.match(path.name).group(1)  # type: ignore[union-attr]
        by_unit: dict[int, list[pa.Table]] = {}
        for table in read_journal(path):
            for unit, piece in _by_unit(table, unit_size):
                by_unit.setdefault(unit, []).append(piece)
        for unit, pieces in sorted(by_unit.items()):
            if unit not in skip:
                target = fragment_path(run_dir, unit, token)
                written.setdefault(unit, []).append(write_table(target, combine_parts(pieces)))
        path.unlink(missing_ok=True)
    return written


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


def _dumps(errors: list[dict]) -> bytes:
    return json.dumps(errors, ensure_ascii=False).encode()
