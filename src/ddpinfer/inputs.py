"""Read inputs from JSONL, CSV, Parquet or plain text, streaming, as (row, id, text).

A *row* is the 0-based position of an input among the file's inputs (blank lines in JSONL and
text files are not inputs). Rows are what work units are made of; ids are what users see.

A problem with the file as a whole (missing, empty, no such column) is an ``InputError``. A
problem with one record is an ``InputError`` too, unless the reader was told to skip bad records
(``data.on_error=skip``): then the row comes back with ``error`` set, to be recorded, not run.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpinfer.content_digest import RowDigests
from ddpinfer.errors import UserError

Id = str | int

FieldCheck = Callable[[Any, Path], Any]
"""Checks one extra field's value (given the data file's folder, for relative paths) and
returns it normalised; raises ``ValueError`` saying what is wrong with it."""

SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
SKIP_HINT = "HINT: fix the input, or set data.on_error=skip to record bad inputs and go on."


class InputError(UserError):
    """An input file or one of its records cannot be used; the message names file and line."""


@dataclass(frozen=True)
class Row:
    index: int
    id: Id | None
    text: str
    error: str | None = None
    """Why this record cannot be run (only when bad records are skipped)."""
    fields: Mapping[str, Any] | None = None
    """The record's extra fields that were asked for (``InputSpec.fields``), by name."""


@dataclass(frozen=True)
class InputSpec:
    path: Path
    format: str
    text_field: str = "text"
    id_field: str | None = None
    skip_bad: bool = False
    fields: tuple[tuple[str, FieldCheck | None], ...] = ()
    """Extra fields to read from each record besides text and id (e.g. an image path), each
    with an optional check run as the record is read: a failed check makes a bad record."""


def detect_format(path: Path, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}. "
            f"HINT: set data.format=jsonl|csv|parquet|text."
        )
    return fmt


def open_spec(
    path: str,
    fmt: str,
    text_field: str,
    id_field: str | None,
    skip_bad: bool = False,
    fields: tuple[tuple[str, FieldCheck | None], ...] = (),
) -> InputSpec:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"data.path={path}: no such file. HINT: pass an existing input file.")
    spec = InputSpec(p, detect_format(p, fmt), text_field, id_field, skip_bad, fields)
    if fields and spec.format == "text":
        raise InputError(
            f"{p}: a plain text file has no field {fields[0][0]!r}. "
            "HINT: use JSONL, CSV or Parquet input with that column."
        )
    return spec


def read_rows(spec: InputSpec, rows: range | None = None) -> Iterator[Row]:
    """Yield the inputs whose row index is in ``rows`` (contiguous; all when None), in order."""
    rows = rows if rows is not None else range(2**62)
    if not rows:
        return
    if spec.format == "parquet":
        records = _parquet_records(spec, rows.start)
    elif spec.format == "csv":
        records = _csv_records(spec)
    else:
        records = _lines(spec.path)
    for index, (where, raw) in enumerate(
        records, start=rows.start if spec.format == "parquet" else 0
    ):
        if index < rows.start:
            continue
        if index >= rows.stop:
            return
        yield _make_row(spec, index, where, raw)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines as bytes, with 1-based line numbers; decoded per line so that one
    undecodable line is one bad record, not an unreadable file."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line


def _csv_records(spec: InputSpec) -> Iterator[tuple[int, dict]]:
    with open(spec.path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            if reader.fieldnames is None:
                raise InputError(f"{spec.path}: the CSV file is empty (no header row).")
            for record in reader:
                yield reader.line_num, record
        except UnicodeDecodeError as e:
            raise InputError(
                f"{spec.path}: not valid UTF-8 after line {reader.line_num} ({e.reason}). "
                "HINT: re-encode the file as UTF-8."
            ) from None


def _parquet_records(spec: InputSpec, start: int) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(spec.path)
    columns = [c for c in (spec.text_field, spec.id_field, *(f for f, _ in spec.fields)) if c]
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(
            f"{spec.path}: no column {missing[0]!r}; columns present: "
            f"{', '.join(pf.schema_arrow.names)}. HINT: set data.text_field / data.id_field."
        )
    index = 0
    for batch in pf.iter_batches(columns=columns, batch_size=4096):
        if index + batch.num_rows <= start:  # skip whole batches before the range
            index += batch.num_rows
            continue
        for offset, record in enumerate(batch.to_pylist()):
            if index + offset >= start:
                yield f"row {index + offset}", record
        index += batch.num_rows


def _make_row(spec: InputSpec, index: int, where: int | str, raw: bytes | dict) -> Row:
    at = f"{spec.path}:{where}" if isinstance(where, int) else f"{spec.path} ({where})"
    record_id: Id | None = index if spec.id_field is None else None
    try:
        record = _parse(spec, at, raw)
        if spec.format == "text":
            return Row(index, index, _check_text(at, record))
        record_id = _record_id(spec, at, index, record)
        text = _record_text(spec, at, record)
        return Row(index, record_id, text, fields=_record_fields(spec, at, record))
    except InputError as e:
        if not spec.skip_bad:
            raise InputError(f"{e} {SKIP_HINT}") from None
        return Row(index, record_id, "", error=str(e))


def _parse(spec: InputSpec, at: str, raw: bytes | dict) -> str | dict:
    if isinstance(raw, dict):
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{at}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})."
        ) from None
    if spec.format == "text":
        return text.rstrip("\r\n")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{at}: malformed JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(record, dict):
        raise InputError(f"{at}: expected a JSON object, got {type(record).__name__}.")
    return record


def _check_text(at: str, text: str) -> str:
    if not text.strip():
        raise InputError(f"{at}: the text is empty.")
    return text


def _record_text(spec: InputSpec, at: str, record: dict) -> str:
    if None in record:  # csv.DictReader puts surplus cells under the key None
        raise InputError(f"{at}: more cells than the header has columns.")
    if spec.text_field not in record:
        raise InputError(
            f"{at}: no field {spec.text_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.text_field=<one of them>."
        )
    text = record[spec.text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        if spec.format == "csv" and text is None:
            raise InputError(f"{at}: fewer cells than the header; {spec.text_field!r} is missing.")
        raise InputError(f"{at}: field {spec.text_field!r} is {kind}, expected a string.")
    return _check_text(at, text)


def _record_fields(spec: InputSpec, at: str, record: dict) -> dict[str, Any] | None:
    if not spec.fields:
        return None
    fields = {}
    for name, check in spec.fields:
        if name not in record:
            raise InputError(
                f"{at}: no field {name!r}; fields present: {', '.join(map(str, record))}."
            )
        try:
            fields[name] = record[name] if check is None else check(record[name], spec.path.parent)
        except ValueError as e:
            raise InputError(f"{at}: field {name!r}: {e}") from None
    return fields


def _record_id(spec: InputSpec, at: str, index: int, record: dict) -> Id:
    if spec.id_field is None:
        return index
    if spec.id_field not in record:
        raise InputError(
            f"{at}: no id field {spec.id_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.id_field=<one of them>, or leave it unset to use row numbers."
        )
    value = record[spec.id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InputError(f"{at}: id field {spec.id_field!r} is {value!r}; ids must be str or int.")
    return value


BLOCK_ROWS = 64
"""Rows per content-hash block when data.unit_size is unset: automatic unit sizes are multiples
of it, so a unit's digest is made of whole blocks."""


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


def bad_reason(message: str) -> str:
    """The kind of problem, without where it was seen: ``in.jsonl:7: no field 'text'; fields
    present: a, b`` -> ``no field 'text'``, so that many bad records can be counted by kind."""
    message = re.sub(r"^.*?(:\d+| \(row \d+\)): ", "", message, count=1)
    return re.split(r"[;,(]| HINT:|\.$|\. ", message, maxsplit=1)[0].strip()


def scan(spec: InputSpec, block_rows: int = BLOCK_ROWS) -> InputScan:
    """Read every record before any model work: under ``on_error=fail`` the first bad record
    stops the run here, before compute is spent; under ``skip`` bad records are counted by kind.
    The content is hashed on the way, per ``block_rows`` rows, for the run's fingerprint."""
    num_rows = 0
    first_seen: dict[Id, int] = {}
    duplicates: dict[int, str] = {}
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    hasher = RowDigests(str(spec.path), block_rows)
    for row in read_rows(spec):
        num_rows += 1
        hasher.add(row)
        error = row.error
        if error is None and spec.id_field is not None:
            first = first_seen.setdefault(row.id, row.index)  # type: ignore[arg-type]
            if first != row.index:
                error = (
                    f"{spec.path} (row {row.index}): duplicate id {row.id!r}, first at row {first}."
                )
                if not spec.skip_bad:
                    raise InputError(f"{error} Ids must be unique. {SKIP_HINT}")
                duplicates[row.index] = error
        if error is not None:
            kind = "duplicate id" if row.index in duplicates else bad_reason(error)
            reasons[kind] += 1
            examples.setdefault(kind, error)
    if num_rows == 0:
        raise InputError(f"{spec.path}: the file holds no inputs. HINT: check data.path.")
    digest, blocks = hasher.finish(num_rows)
    bad = sum(reasons.values())
    return InputScan(num_rows, bad, duplicates, digest, block_rows, blocks, reasons, examples)


class RowStream:
    """One forward pass over the inputs for a rank's ascending windows of rows: each call reads
    on from where the last stopped, so a rank reads the file once, not once per window."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._rows: Iterator[Row] | None = None
        self._next = 0

    def read(self, rows: range) -> Iterator[Row]:
        """The rows in ``rows``, which must start at or after the end of the previous call's."""
        if self._rows is None or rows.start < self._next:
            self._rows, self._next = read_rows(self.spec, range(rows.start, 2**62)), rows.start
        for row in self._rows:
            self._next = row.index + 1
            if row.index >= rows.start:
                yield row
            if self._next >= rows.stop:
                return
