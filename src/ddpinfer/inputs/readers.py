"""Read inputs from JSONL, CSV, Parquet, plain text or a ``save_to_disk`` folder, streaming,
as (row, id, text).

A *row* is the 0-based position of an input among all the inputs (blank lines in JSONL and
text files are not inputs); with several files (a glob, a sharded dataset) rows count on from
one file to the next. Rows are what work units are made of; ids are what users see.

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
from typing import Any, NamedTuple

from ddpinfer.errors import InputError
from ddpinfer.inputs.files import find_input_files
from ddpinfer.inputs.seek import SeekIndex, SeekPoint

Id = str | int

FieldCheck = Callable[[Any, Path], Any]
"""Checks one extra field's value (given the folder of the record's data file, for relative
paths) and returns it normalised; raises ``ValueError`` saying what is wrong with it."""

COLUMNAR = ("parquet", "hf_dataset")
"""Formats read in record batches of only the needed columns, skipped by their row counts."""
SKIP_HINT = "HINT: fix the input, or set data.on_error=skip to record bad inputs and go on."
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integer ids must fit here: every output format stores them as int64."""


class MissingField(InputError):
    """A record without the text or id field: usually data.text_field or data.id_field is
    wrong, and skipping would only mark every record bad."""


@dataclass(frozen=True)
class Row:
    index: int
    id: Id | None
    text: str
    error: str | None = None
    """Why this record cannot be run (only when bad records are skipped)."""
    fields: Mapping[str, Any] | None = None
    """The record's extra fields that were asked for (``InputSpec.fields``), by name."""
    at: str = ""
    """Where the record is, for messages: ``file:line``, or ``file (row k)`` for the k-th row
    of a Parquet or Arrow file."""


@dataclass(frozen=True)
class InputSpec:
    source: str
    """``data.path`` as given (a file, a glob or a folder): what messages about all inputs name."""
    files: tuple[Path, ...]
    """The files read, in order (one for a single file)."""
    format: str
    text_field: str = "text"
    id_field: str | None = None
    skip_bad: bool = False
    fields: tuple[tuple[str, FieldCheck | None], ...] = ()
    """Extra fields to read from each record besides text and id (e.g. an image path), each
    with an optional check run as the record is read: a failed check makes a bad record."""
    keep: tuple[str, ...] = ()
    """Fields copied to the output as they are (``output.keep_fields``): read into
    ``Row.fields`` like ``fields``, and part of the content digest, since they reach the output."""
    id_detected: bool = False
    """``id_field`` was unset, and the records have a field named ``id``: it is the id."""
    digested: tuple[str, ...] = ()
    """Fields of ``fields`` whose values decide a row's results (``data.params_field``): part
    of the content digest, as kept fields are."""
    text_check: FieldCheck | None = None
    """Checks the text field's value when it is not plain text and returns it as text (chat
    messages, ``data.messages_field``: as canonical JSON); a failed check makes a bad record."""

    def read_fields(self) -> list[str]:
        """Every field a record must have besides the text and the id."""
        return [*(name for name, _ in self.fields), *self.keep]


def open_spec(
    path: str,
    fmt: str,
    text_field: str,
    id_field: str | None,
    skip_bad: bool = False,
    fields: tuple[tuple[str, FieldCheck | None], ...] = (),
    split: str | None = None,
    keep: tuple[str, ...] = (),
    text_check: FieldCheck | None = None,
    digested: tuple[str, ...] = (),
) -> InputSpec:
    found = find_input_files(path, fmt, split)
    detected = id_field is None and ID_FIELD in first_record_fields(found.files[0], found.format)
    spec = InputSpec(
        path,
        found.files,
        found.format,
        text_field,
        ID_FIELD if detected else id_field,
        skip_bad,
        fields,
        keep,
        id_detected=detected,
        text_check=text_check,
        digested=digested,
    )
    if spec.read_fields() and spec.format == "text":
        raise InputError(
            f"{path}: a plain text file has no field {spec.read_fields()[0]!r}. "
            "HINT: use JSONL, CSV or Parquet input with that column."
        )
    return spec


ID_FIELD = "id"
"""The field used as each record's id when data.id_field is unset and the records have it."""


def first_record_fields(path: Path, fmt: str) -> list[str]:
    """The field names of a file's first record (its header, its schema), without reading the
    rest; [] for plain text, or when the first record says nothing (it is checked later)."""
    import pyarrow as pa

    try:
        if fmt == "csv":
            with open(path, encoding="utf-8-sig", newline="") as f:
                return next(csv.reader(f), [])
        if fmt == "jsonl":
            first = next(nonblank_lines(path), (0, b"{}"))[1]
            record = json.loads(first.decode("utf-8"))
            return list(record) if isinstance(record, dict) else []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if fmt == "hf_dataset":
            with pa.memory_map(str(path)) as source:
                return list(pa.ipc.open_stream(source).schema.names)
    except (OSError, ValueError, UnicodeDecodeError, InputError, pa.ArrowException):
        return []
    return []


def read_rows(
    spec: InputSpec,
    rows: range | None = None,
    seek: SeekIndex | None = None,
    index: SeekIndex | None = None,
) -> Iterator[Row]:
    """Yield the inputs whose row index is in ``rows`` (contiguous; all when None), in order.
    Rows before the range are not decoded: Parquet and Arrow files and batches are skipped by
    their row counts, JSON Lines and text from the ``seek`` point at or before the range's
    start on by their lines. ``index``: notes seek points in it on the way (the scan)."""
    rows = rows if rows is not None else range(2**62)
    if spec.format in COLUMNAR:
        yield from _columnar_rows(spec, rows)
        return
    for record in line_records(spec, rows.start, seek, index):
        if record.row >= rows.stop:
            return
        if record.row >= rows.start:
            yield record.make(spec)


class LineRecord(NamedTuple):
    """One record of a CSV, JSON Lines or text file, not decoded yet."""

    file: Path
    row: int
    line: int
    raw: bytes | dict
    text_line: int
    """Its 0-based line across the input's files (a plain text input's id)."""

    def make(self, spec: InputSpec) -> Row:
        return make_row(spec, self.file, self.row, self.line, self.raw, self.text_line)


def line_records(
    spec: InputSpec,
    start: int = 0,
    seek: SeekIndex | None = None,
    index: SeekIndex | None = None,
) -> Iterator[LineRecord]:
    """The records of a line-based input, from the ``seek`` point at or before row ``start``
    on (from the first row without one); ``index`` notes seek points on the way."""
    point = (seek.before(start) if seek is not None else None) or SeekPoint(0, 0, 0, 0, 0)
    first, lines_before = point.row, point.lines_before
    for k in range(point.file, len(spec.files)):
        file, counted, at = spec.files[k], [0], [0]
        if spec.format == "csv":
            records: Iterator[tuple[int, Any]] = _csv_records(file)
        else:
            begin = (point.offset, point.line) if k == point.file else (0, 0)
            records = nonblank_lines(file, counted, begin, at)
        row = first
        for line, raw in records:
            if index is not None and index.wants(row) and spec.format != "csv":
                index.add(row, k, at[0], line - 1, lines_before)
            yield LineRecord(file, row, line, raw, lines_before + line - 1)
            row += 1
        first, lines_before = row, lines_before + counted[0]


def _columnar_rows(spec: InputSpec, rows: range) -> Iterator[Row]:
    first = 0  # the row of the file's first record: rows count on across files
    for file in spec.files:
        if first >= rows.stop:
            return
        size = num_rows(spec.format, file)
        if first + size > rows.start:
            skip = max(0, rows.start - first)
            for offset, record in _columnar_records(spec, file, skip, rows.stop - first):
                yield make_row(spec, file, first + offset, f"row {offset}", record)
        first += size


BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark some editors (Excel, Notepad) put at the start of a file."""


def nonblank_lines(
    path: Path,
    counted: list[int] | None = None,
    begin: tuple[int, int] = (0, 0),
    at: list[int] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines as bytes, with 1-based line numbers (a byte-order mark before the first
    left out); decoded per line so that one undecodable line is one bad record, not an
    unreadable file. ``counted[0]`` becomes the file's number of lines, blank ones included,
    once every line is read. ``begin``: the byte offset to start at and the lines before it;
    ``at[0]``: the byte offset of the line last yielded."""
    offset, before = begin
    line_no = before
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for line_no, line in enumerate(f, start=before + 1):
                size = len(line)
                if line_no == 1 and line.startswith(BOM):
                    line = line[len(BOM) :]
                if line.strip():
                    if at is not None:
                        at[0] = offset
                    yield line_no, line
                offset += size
            if counted is not None:
                counted[0] = line_no
    except OSError as e:
        raise unreadable(path, e) from None


def _csv_records(path: Path) -> Iterator[tuple[int, dict]]:
    # utf-8-sig: a byte-order mark (Excel's) is not part of the first column's name
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            if reader.fieldnames is None:
                raise InputError(f"{path}: the CSV file is empty (no header row).")
            for record in reader:
                yield reader.line_num, record
        except UnicodeDecodeError as e:
            raise InputError(
                f"{path}: not valid UTF-8 after line {reader.line_num} ({e.reason}). "
                "HINT: re-encode the file as UTF-8."
            ) from None


def unreadable(path: Path, error: Exception) -> InputError:
    """A file that cannot be read at all (corrupt, truncated, an I/O error): always an error,
    whatever data.on_error says, since its records cannot even be counted."""
    return InputError(
        f"{path}: cannot read it ({type(error).__name__}: {error}). HINT: the file may be "
        "truncated or corrupt: write it again, or leave it out of data.path."
    )


def num_rows(fmt: str, path: Path) -> int:
    """From the Parquet footer, or the Arrow stream's batch headers (memory-mapped: no data
    is read)."""
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        return sum(batch.num_rows for batch in _arrow_stream(path))
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, e) from None


def _arrow_stream(path: Path) -> Iterator[Any]:
    """The record batches of an Arrow IPC stream file (what ``save_to_disk`` writes)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def column_batches(spec: InputSpec, path: Path, skip: int = 0) -> Iterator[tuple[int, Any]]:
    """The record batches of a Parquet or Arrow file that hold its rows from ``skip`` on, as
    (row in the file of the batch's first row, batch of only the needed columns); batches
    before them are skipped by their row counts, without decoding."""
    import pyarrow as pa

    try:
        yield from _column_batches(spec, path, skip)
    except (OSError, pa.ArrowException) as e:
        raise unreadable(path, e) from None


def _column_batches(spec: InputSpec, path: Path, skip: int) -> Iterator[tuple[int, Any]]:
    columns = list(dict.fromkeys(c for c in (spec.text_field, spec.id_field) if c))
    columns += [c for c in spec.read_fields() if c not in columns]
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        groups, first = _row_groups_from(pf.metadata, skip)
        batches = pf.iter_batches(batch_size=4096, row_groups=groups, columns=columns)
        yield from _selected(path, pf.schema_arrow.names, columns, batches, first, skip)
        return
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        yield from _selected(path, reader.schema.names, columns, reader, 0, skip)


def _selected(
    path: Path, names: list[str], columns: list[str], batches: Any, first: int, skip: int
) -> Iterator[tuple[int, Any]]:
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{path}: no column {missing[0]!r}; columns present: {', '.join(names)}. "
            "HINT: set data.text_field / data.id_field."
        )
    index = first
    for batch in batches:
        if index + batch.num_rows > skip:  # batches before the range are not decoded
            yield index, batch.select(columns)
        index += batch.num_rows


def _columnar_records(
    spec: InputSpec, path: Path, skip: int, stop: int = 2**62
) -> Iterator[tuple[int, dict]]:
    """The records of a Parquet or Arrow file from its ``skip``-th row to before its
    ``stop``-th, as (row in the file, record); only those rows are decoded into records."""
    for start, batch in column_batches(spec, path, skip):
        if start >= stop:
            return
        begin = max(0, skip - start)
        part = batch.slice(begin, stop - start - begin)
        yield from enumerate(part.to_pylist(), start + begin)


def _row_groups_from(metadata: Any, skip: int) -> tuple[list[int], int]:
    """The row groups from the one holding row ``skip`` on, and the first row of that group."""
    first = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if first + rows > skip:
            return list(range(group, metadata.num_row_groups)), first
        first += rows
    return [], first


def make_row(
    spec: InputSpec,
    file: Path,
    index: int,
    where: int | str,
    raw: bytes | dict,
    line: int | None = None,
) -> Row:
    """The record read from ``raw``; ``line``: its 0-based line across the input's files, the
    id of a plain text file's line (blank lines are no inputs, but ids still match the file)."""
    at = f"{file}:{where}" if isinstance(where, int) else f"{file} ({where})"
    record_id: Id | None = index if spec.id_field is None else None
    if spec.format == "text" and line is not None:
        record_id = line
    try:
        record = _parse(spec, at, raw)
        if spec.format == "text":
            return Row(index, record_id, _check_text(at, record), at=at)
        record_id = _record_id(spec, at, index, record)
        text = _record_text(spec, file, at, record)
        return Row(index, record_id, text, fields=_record_fields(spec, file, at, record), at=at)
    except InputError as e:
        if not spec.skip_bad:  # a missing field is a setting to fix, not a record to skip
            raise InputError(
                str(e) if isinstance(e, MissingField) else f"{e} {SKIP_HINT}"
            ) from None
        return Row(index, record_id, "", error=str(e), at=at)


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


def _record_text(spec: InputSpec, file: Path, at: str, record: dict) -> str:
    if None in record:  # csv.DictReader puts surplus cells under the key None
        raise InputError(f"{at}: more cells than the header has columns.")
    if spec.text_field not in record:
        raise MissingField(
            f"{at}: no field {spec.text_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.text_field=<one of them>."
        )
    text = record[spec.text_field]
    if spec.text_check is not None:
        try:
            return spec.text_check(text, file.parent)
        except ValueError as e:
            raise InputError(f"{at}: field {spec.text_field!r}: {e}") from None
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        if spec.format == "csv" and text is None:
            raise InputError(f"{at}: fewer cells than the header; {spec.text_field!r} is missing.")
        raise InputError(f"{at}: field {spec.text_field!r} is {kind}, expected a string.")
    return _check_text(at, text)


def _record_fields(spec: InputSpec, file: Path, at: str, record: dict) -> dict[str, Any] | None:
    if not spec.fields and not spec.keep:
        return None
    fields = {}
    for name, check in (*spec.fields, *((k, None) for k in spec.keep)):
        if name in fields:  # kept and read by the task too: one value, the task's
            continue
        if name not in record:
            raise InputError(
                f"{at}: no field {name!r}; fields present: {', '.join(map(str, record))}."
            )
        try:
            fields[name] = record[name] if check is None else check(record[name], file.parent)
        except ValueError as e:
            raise InputError(f"{at}: field {name!r}: {e}") from None
    return fields


def _record_id(spec: InputSpec, at: str, index: int, record: dict) -> Id:
    if spec.id_field is None:
        return index
    if spec.id_field not in record:
        raise MissingField(
            f"{at}: no id field {spec.id_field!r}; fields present: {', '.join(map(str, record))}. "
            f"HINT: set data.id_field=<one of them>, or leave it unset to use row numbers."
        )
    value = record[spec.id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InputError(f"{at}: id field {spec.id_field!r} is {value!r}; ids must be str or int.")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise InputError(
            f"{at}: id field {spec.id_field!r} is {value}, an integer outside 64 bits, which "
            "Parquet, datasets and the part files cannot hold. HINT: write such ids as strings."
        )
    return value
