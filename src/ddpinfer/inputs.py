"""Read inputs from JSONL, CSV, Parquet or plain text, streaming, as (row, id, text).

A *row* is the 0-based position of an input among the file's inputs (blank lines in JSONL and
text files are not inputs). Rows are what work units are made of; ids are what users see.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

Id = str | int

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


class InputError(ValueError):
    """An input file or one of its records cannot be used; the message names file and line."""


@dataclass(frozen=True)
class Row:
    index: int
    id: Id
    text: str


@dataclass(frozen=True)
class InputSpec:
    path: Path
    format: str
    text_field: str = "text"
    id_field: str | None = None


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


def open_spec(path: str, fmt: str, text_field: str, id_field: str | None) -> InputSpec:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"data.path={path}: no such file. HINT: pass an existing input file.")
    return InputSpec(p, detect_format(p, fmt), text_field, id_field)


def count_rows(spec: InputSpec) -> int:
    """Number of inputs, without parsing records where the format allows it."""
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(spec.path).metadata.num_rows
    if spec.format == "csv":
        return sum(1 for _ in _csv_records(spec))
    with _open_text(spec.path) as f:
        return sum(1 for line in f if line.strip())


def read_rows(spec: InputSpec, rows: range) -> Iterator[Row]:
    """Yield the inputs whose row index is in ``rows`` (a contiguous range), in order."""
    if not rows:
        return
    if spec.format == "parquet":
        yield from _parquet_rows(spec, rows)
        return
    lines = _csv_records(spec) if spec.format == "csv" else _text_lines(spec.path)
    for index, (line_no, raw) in enumerate(lines):
        if index < rows.start:
            continue
        if index >= rows.stop:
            return
        yield _make_row(spec, index, line_no, raw)


def _open_text(path: Path):
    return open(path, encoding="utf-8", newline="")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line


def _csv_records(spec: InputSpec) -> Iterator[tuple[int, dict]]:
    with _open_text(spec.path) as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise InputError(f"{spec.path}: the CSV file is empty (no header row).")
        for record in reader:
            yield reader.line_num, record


def _parquet_rows(spec: InputSpec, rows: range) -> Iterator[Row]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(spec.path)
    columns = [c for c in (spec.text_field, spec.id_field) if c]
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(
            f"{spec.path}: no column {missing[0]!r}; columns present: "
            f"{', '.join(pf.schema_arrow.names)}. HINT: set data.text_field / data.id_field."
        )
    index = 0
    for batch in pf.iter_batches(columns=columns, batch_size=4096):
        if index + batch.num_rows <= rows.start:
            index += batch.num_rows
            continue
        for record in batch.to_pylist():
            if index >= rows.stop:
                return
            if index >= rows.start:
                yield _make_row(spec, index, f"row {index}", record)
            index += 1


def _make_row(spec: InputSpec, index: int, where: int | str, raw: str | dict) -> Row:
    at = f"{spec.path}:{where}" if isinstance(where, int) else f"{spec.path} ({where})"
    if spec.format == "text":
        return Row(index, index, raw.rstrip("\r\n"))
    if spec.format == "jsonl":
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{at}: malformed JSON ({e.msg} at column {e.colno}).") from None
        if not isinstance(raw, dict):
            raise InputError(f"{at}: expected a JSON object, got {type(raw).__name__}.")
    return Row(index, _record_id(spec, at, index, raw), _record_text(spec, at, raw))


def _record_text(spec: InputSpec, at: str, record: dict) -> str:
    if spec.text_field not in record:
        raise InputError(
            f"{at}: no field {spec.text_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.text_field=<one of them>."
        )
    text = record[spec.text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        raise InputError(f"{at}: field {spec.text_field!r} is {kind}, expected a string.")
    return text


def _record_id(spec: InputSpec, at: str, index: int, record: dict) -> Id:
    if spec.id_field is None:
        return index
    if spec.id_field not in record:
        raise InputError(
            f"{at}: no id field {spec.id_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.id_field=<one of them>, or leave it unset to use row numbers."
        )
    value = record[spec.id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{at}: id field {spec.id_field!r} is {value!r}; ids must be str or int.")
    return value
