"""Rank 0's preflight scan: every input record read once, before any model work.

Under ``data.on_error=fail`` the first bad record stops the run here, before compute is spent;
under ``skip`` bad records are counted by kind. Ids are checked for repeats, and the content is
hashed on the way (``content_digest``) for the run's fingerprint.

At 100 million rows this pass is what every rank waits for, so the common record takes a fast
path: JSON Lines are parsed with orjson and checked inline, Parquet and Arrow batches are
checked column by column with pyarrow. Anything unusual on that path (a record that does not
parse, a missing or empty field, a null, an id of another type) goes through ``inputs``' own
reader, record by record, which decides and names it exactly as the ranks' reader does.
Formats and settings without a fast path (CSV, plain text, fields that a task or
``output.keep_fields`` reads) are read by that reader throughout. ``benchmarks/bench_scan.py``
measures both paths side by side; tests check they agree on every kind of record.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ddpinfer.errors import InputError
from ddpinfer.inputs.digests import RowDigests
from ddpinfer.inputs.readers import (
    COLUMNAR,
    INT64_MAX,
    INT64_MIN,
    SKIP_HINT,
    Id,
    InputSpec,
    Row,
    column_batches,
    make_row,
    nonblank_lines,
    read_rows,
)
from ddpinfer.inputs.seek import SeekIndex

BLOCK_ROWS = 64
"""Rows per content-hash block when data.unit_size is unset: automatic unit sizes are multiples
of it, so a unit's digest is made of whole blocks."""
BATCH_ROWS = 4096
LINE_FORMATS = ("jsonl", "text")
"""Formats whose rows a rank finds by seek points (CSV's quoted newlines rule them out)."""


@dataclass
class InputScan:
    """What reading every record once found: the row count, the rows not to run and why, and
    content hashes (of the whole file and of each block of rows)."""

    num_rows: int
    bad_rows: int
    duplicates: dict[int, str]
    """Row -> reason, for each repeat of an id seen earlier (only when skipping bad records)."""
    digest: str = ""
    """sha256 of every input's id and text, in order: what the results are computed from."""
    block_rows: int = BLOCK_ROWS
    block_digests: list[str] = field(default_factory=list)
    """One digest per ``block_rows`` consecutive rows (the last block may be shorter)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """How many bad records there are of each kind (``bad_reason``)."""
    examples: dict[str, str] = field(default_factory=dict)
    """The first full message of each kind of bad record."""
    blank_lines: int = 0
    """Plain text: blank lines before the last input (no inputs; ids are line numbers)."""
    seek: SeekIndex | None = None
    """Where every ``block_rows``-th row starts (JSON Lines and text; None for the others)."""


def bad_reason(message: str) -> str:
    """The kind of problem, without where it was seen: ``in.jsonl:7: no field 'text'; fields
    present: a, b`` -> ``no field 'text'``, so that many bad records can be counted by kind."""
    message = re.sub(r"^.*?(:\d+| \(row \d+\)): ", "", message, count=1)
    return re.split(r"[;,(]| HINT:|\.$|\. ", message, maxsplit=1)[0].strip()


@dataclass
class _Batch:
    """Consecutive rows from ``first`` on, as columns."""

    first: int
    ids: list[Id]
    texts: list[str]
    errors: list[str | None] | None
    """Each row's error, or None when every row is good."""
    where: Callable[[int], str]
    """Where the k-th row is, for messages (``file:line``)."""
    kept: list[tuple] | None = None


def scan(
    spec: InputSpec, block_rows: int = BLOCK_ROWS, record_by_record: bool = False
) -> InputScan:
    """Read, check and hash every record; raise ``InputError`` on the first bad one unless bad
    records are skipped (then they are counted by kind). ``record_by_record``: without the fast
    path (what it is checked and measured against)."""
    digests = RowDigests([str(f) for f in spec.files], block_rows)
    tally = _Tally(spec)
    seek = SeekIndex(block_rows) if spec.format in LINE_FORMATS else None
    num_rows, last_id = 0, -1
    for batch in _batches(spec, not record_by_record, seek):
        # Tallied first: a row's digest covers whether it repeats an id seen before it, so a
        # resume recomputes a row that became (or stopped being) a repeat through an edit
        # elsewhere, not only rows whose own content changed.
        repeats = tally.add(batch)
        digests.add(
            batch.ids, batch.texts, _with(batch.errors, repeats, len(batch.ids)), batch.kept
        )
        num_rows += len(batch.ids)
        last_id = batch.ids[-1] if batch.ids else last_id
    if num_rows == 0:
        what = "the file holds" if len(spec.files) == 1 else f"its {len(spec.files)} files hold"
        raise InputError(f"{spec.source}: {what} no inputs. HINT: check data.path.")
    digest, blocks = digests.finish(num_rows)
    bad = sum(tally.reasons.values())
    blank = last_id + 1 - num_rows if spec.format == "text" else 0
    return InputScan(
        num_rows,
        bad,
        tally.duplicates,
        digest,
        block_rows,
        blocks,
        tally.reasons,
        tally.examples,
        blank,
        seek,
    )


class _Tally:
    """Repeated ids, and bad records by kind, in row order."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.seen: dict[str, int] | None = {} if spec.id_field is not None else None
        self.duplicates: dict[int, str] = {}
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, batch: _Batch) -> dict[int, str]:
        """Count the batch's bad records and find its repeated ids: returns the repeats, as
        position in the batch -> why."""
        repeats: dict[int, str] = {}
        if self.seen is None and batch.errors is None:
            return repeats
        errors = batch.errors or itertools.repeat(None)
        for index, row_id, error in zip(itertools.count(batch.first), batch.ids, errors):
            if error is not None:
                self._count(bad_reason(error), error)
            elif self.seen is not None:  # 1 and "1" are one id: Parquet's string ids
                first = self.seen.setdefault(str(row_id), index)
                if first != index:
                    repeats[index - batch.first] = self._repeat(batch, index, row_id, first)
        return repeats

    def _repeat(self, batch: _Batch, index: int, row_id: Id, first: int) -> str:
        at = batch.where(index - batch.first)
        error = f"{at}: duplicate id {row_id!r} (row {index}), first at row {first}."
        if not self.spec.skip_bad:
            raise InputError(f"{error} Ids must be unique. {SKIP_HINT}")
        self.duplicates[index] = error
        self._count("duplicate id", error)
        return error

    def _count(self, kind: str, error: str) -> None:
        self.reasons[kind] += 1
        self.examples.setdefault(kind, error)


def _with(
    errors: list[str | None] | None, more: dict[int, str], rows: int
) -> list[str | None] | None:
    """``errors`` (None: every row good) with ``more`` (position -> why) added."""
    if not more:
        return errors
    merged = list(errors) if errors is not None else [None] * rows
    for position, error in more.items():
        merged[position] = error
    return merged


def _batches(spec: InputSpec, fast: bool, seek: SeekIndex | None) -> Iterator[_Batch]:
    """Every row in batches: by the fast path where it covers the format and settings; seek
    points noted in ``seek`` on the way."""
    slow = spec.read_fields() or spec.text_check is not None  # fields checked record by record
    if not fast or slow or spec.format not in ("jsonl", *COLUMNAR):
        digested = spec.keep + tuple(f for f in spec.digested if f not in spec.keep)
        yield from _row_batches(read_rows(spec, index=seek), digested)
        return
    first = 0
    for k, file in enumerate(spec.files):
        if spec.format == "jsonl":
            batches = _jsonl_batches(spec, file, first, k, seek)
        else:
            batches = _columnar_batches(spec, file, first)
        for batch in batches:
            yield batch
            first = batch.first + len(batch.ids)


def _row_batches(rows: Iterator[Row], keep: tuple[str, ...] = ()) -> Iterator[_Batch]:
    """Rows read by ``inputs``' reader, as batches; a bad record it raises on ends the rows
    before it as a batch first (so the checks of those rows come first, as they would row by
    row)."""
    batch: list[Row] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                yield _of_rows(batch, keep)
                batch = []
    except InputError:
        if batch:
            yield _of_rows(batch, keep)
        raise
    if batch:
        yield _of_rows(batch, keep)


def _of_rows(rows: list[Row], keep: tuple[str, ...]) -> _Batch:
    errors = [r.error for r in rows]
    return _Batch(
        rows[0].index,
        [r.id for r in rows],  # type: ignore[misc]
        [r.text for r in rows],
        errors if any(e is not None for e in errors) else None,
        [r.at for r in rows].__getitem__,
        [tuple((r.fields or {}).get(k) for k in keep) for r in rows] if keep else None,
    )


def _jsonl_batches(
    spec: InputSpec, file: Path, first: int, file_no: int, seek: SeekIndex | None
) -> Iterator[_Batch]:
    """The records of ``spec.files[file_no]``, in batches; the rows ``seek`` wants noted in
    it."""
    text_field, id_field, loads = spec.text_field, spec.id_field, orjson.loads
    ids: list[Id] = []
    texts: list[str] = []
    lines: list[int] = []
    errors: dict[int, str] = {}  # position in the batch -> why (records inputs' reader took)
    index, at = first, [0]
    for line_no, raw in nonblank_lines(file, at=at):
        if seek is not None and seek.wants(index):
            seek.add(index, file_no, at[0], line_no - 1, 0)
        try:
            record = loads(raw)
        except orjson.JSONDecodeError:
            record = None
        text = row_id = None
        if type(record) is dict:
            text = record.get(text_field)
            row_id = index if id_field is None else record.get(id_field)
        if not (
            type(text) is str
            and text.strip()
            and (
                (type(row_id) is int and INT64_MIN <= row_id <= INT64_MAX)
                or (type(row_id) is str and row_id)
            )
        ):
            try:
                row = make_row(spec, file, index, line_no, raw)
            except InputError:
                if ids:
                    yield _jsonl_batch(file, index - len(ids), ids, texts, lines, errors)
                raise
            text, row_id = row.text, row.id
            if row.error is not None:
                errors[len(ids)] = row.error
        ids.append(row_id)  # type: ignore[arg-type]
        texts.append(text)  # type: ignore[arg-type]
        lines.append(line_no)
        index += 1
        if len(ids) == BATCH_ROWS:
            yield _jsonl_batch(file, index - len(ids), ids, texts, lines, errors)
            ids, texts, lines, errors = [], [], [], {}
    if ids:
        yield _jsonl_batch(file, index - len(ids), ids, texts, lines, errors)


def _jsonl_batch(
    file: Path, first: int, ids: list, texts: list, lines: list[int], errors: dict[int, str]
) -> _Batch:
    listed = [errors.get(k) for k in range(len(ids))] if errors else None
    return _Batch(first, ids, texts, listed, lambda k: f"{file}:{lines[k]}")


def _columnar_batches(spec: InputSpec, file: Path, first: int) -> Iterator[_Batch]:
    for start, columns in column_batches(spec, file):
        at = first + start
        if not _clean(columns, spec):  # record by record, as the ranks read it
            records = enumerate(columns.to_pylist(), start)
            rows = (make_row(spec, file, first + k, f"row {k}", rec) for k, rec in records)
            yield from _row_batches(rows)
            continue
        texts = columns.column(spec.text_field).to_pylist()
        n = len(texts)
        ids = (
            list(range(at, at + n))
            if spec.id_field is None
            else columns.column(spec.id_field).to_pylist()
        )
        yield _Batch(at, ids, texts, None, lambda k, s=start: f"{file} (row {s + k})")


def _clean(columns: Any, spec: InputSpec) -> bool:
    """Whether every record of the batch is good: the text a string with more than whitespace,
    the id (if any) an integer or a non-empty string, no nulls."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def is_string(column: Any) -> bool:
        return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)

    text = columns.column(spec.text_field)
    if not is_string(text) or text.null_count:
        return False
    if pc.any(pc.equal(pc.utf8_length(pc.utf8_trim(text, WHITESPACE)), 0)).as_py():
        return False
    if spec.id_field is None:
        return True
    ids = columns.column(spec.id_field)
    if ids.null_count:
        return False
    if pa.types.is_integer(ids.type):  # uint64 can hold what int64 cannot
        return ids.type != pa.uint64() or (pc.max(ids).as_py() or 0) <= INT64_MAX
    return is_string(ids) and not pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py()


WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every character ``str.strip()`` removes (``str.isspace``): a text of only these is empty."""
