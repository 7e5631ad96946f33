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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class InputScan:
    """What reading every record once found: the row count and the rows not to run."""

    num_rows: int
    bad_rows: int
    duplicates: dict[int, str]
    """Row -> reason, for each repeat of an id seen earlier (only when skipping bad records)."""


def scan(spec: InputSpec) -> InputScan:
    """Read every record before any model work: under ``on_error=fail`` the first bad record
    stops the run here, before compute is spent; under ``skip`` bad records are counted."""
    num_rows = bad = 0
    first_seen: dict[Id, int] = {}
    duplicates: dict[int, str] = {}
    for row in read_rows(spec):
        num_rows += 1
        if row.error is not None:
            bad += 1
            continue
        if spec.id_field is None:
            continue
        first = first_seen.setdefault(row.id, row.index)
        if first != row.index:
            message = (
                f"{spec.path} (row {row.index}): duplicate id {row.id!r}, first at row {first}."
            )
            if not spec.skip_bad:
                raise InputError(f"{message} Ids must be unique. {SKIP_HINT}")
            duplicates[row.index] = message
            bad += 1
    if num_rows == 0:
        raise InputError(f"{spec.path}: the file holds no inputs. HINT: check data.path.")
    return InputScan(num_rows, bad, duplicates)


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
