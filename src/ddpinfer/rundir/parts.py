"""Part files: each finished work unit is one Arrow IPC file under ``<run dir>/parts/``.

A part holds the unit's results as columns: ``row`` (int64), ``id``, then the task's fields in
binary form (embeddings as a fixed-size list of float32, scores as float32, text as UTF-8).
Inputs that could not be run are not rows of the table; they are listed, with the reason, in
the file's schema metadata under ``ddpinfer.errors``. A part is written atomically.

Usually a unit is one part, ``unit-NNNNNN.arrow``, written when its last input is done. A unit
an attempt left half done (``journal``) is a set of *fragments* instead, ``unit-NNNNNN.f-<tag>
.arrow``, each holding some of its rows in the same format: the rows salvaged from the attempt
that stopped, then the rest, computed by the next. A unit is done when its part exists, or when
its fragments hold each of its rows once; the merge combines them (``combine_parts``).

Ids keep their type: an ``int64`` column when all of a part's ids are integers, ``string`` when
all are strings, and for a mix, strings holding each id as JSON (field metadata says so).

Input fields kept for the output (``output.keep_fields``) follow as ``kept:<name>`` columns (a
prefix, so that no input field can clash with ``row``): typed as Arrow infers them when that
gives the values back unchanged, else as JSON text (field metadata says so), decoded on merge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ddpinfer.errors import UserError
from ddpinfer.rundir.atomic import atomic_path
from ddpinfer.rundir.checksums import ChecksumError, sealed, unsealed

PART_NAME = re.compile(r"^unit-(\d{6,})\.arrow$")
FRAGMENT_NAME = re.compile(r"^unit-(\d{6,})\.f-([0-9a-f]+)\.arrow$")
ERRORS_KEY = b"ddpinfer.errors"
ID_ENCODING_KEY = b"ddpinfer.id"
KEPT_PREFIX = "kept:"
KEPT_ENCODING_KEY = b"ddpinfer.kept"


def parts_dir(run_dir: Path) -> Path:
    return run_dir / "parts"


UNITS_PER_FOLDER = 1000
FOLDER_NAME = re.compile(r"^\d{4,}$")


def unit_folder(run_dir: Path, unit: int) -> Path:
    """The folder of ``unit``'s part and fragments: ``parts/0000/`` holds units 0-999,
    ``parts/0001/`` the next thousand. A billion-row job has hundreds of thousands of parts: one
    flat folder of them is slow to list, and to create files in, on a shared filesystem."""
    return parts_dir(run_dir) / f"{unit // UNITS_PER_FOLDER:04d}"


def part_path(run_dir: Path, unit: int) -> Path:
    return unit_folder(run_dir, unit) / f"unit-{unit:06d}.arrow"


def fragment_path(run_dir: Path, unit: int, tag: str) -> Path:
    return unit_folder(run_dir, unit) / f"unit-{unit:06d}.f-{tag}.arrow"


def file_path(run_dir: Path, name: str) -> Path:
    """Where a part or fragment named ``name`` goes (``ValueError`` for any other name: a
    received name is never a path elsewhere)."""
    m = PART_NAME.match(name) or FRAGMENT_NAME.match(name)
    if m is None:
        raise ValueError(f"not the name of a part or fragment: {name!r}")
    return unit_folder(run_dir, int(m.group(1))) / name


def unit_folders(run_dir: Path) -> list[Path]:
    folder = parts_dir(run_dir)
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if FOLDER_NAME.match(p.name) and p.is_dir()]


def _files(run_dir: Path) -> Iterator[Path]:
    """Every entry of the units' folders, and of ``parts/`` itself (journals; the parts of a
    run directory written before parts had folders)."""
    folder = parts_dir(run_dir)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if FOLDER_NAME.match(entry.name) and entry.is_dir():
            yield from entry.iterdir()
        else:
            yield entry


def id_array(ids: Sequence[Any]) -> tuple[pa.Array, pa.Field]:
    if all(isinstance(i, int) for i in ids):
        return pa.array(ids, pa.int64()), pa.field("id", pa.int64())
    if all(isinstance(i, str) for i in ids):
        return pa.array(ids, pa.string()), pa.field("id", pa.string())
    encoded = [json.dumps(i) for i in ids]
    return pa.array(encoded, pa.string()), pa.field(
        "id", pa.string(), metadata={ID_ENCODING_KEY: b"json"}
    )


COMPACT_DTYPES = (np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.uint8))
"""Embedding dtypes kept as they are (task.precision); any other is stored as float32."""


def column_array(values: Any) -> pa.Array:
    """A task column as Arrow: 2-D arrays as fixed-size lists (embeddings), float arrays as
    float32, Arrow arrays as they are, anything else as Arrow infers it."""
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray):
        if values.ndim == 2:  # embeddings: float32, or the compact dtype of task.precision
            dtype = values.dtype if values.dtype in COMPACT_DTYPES else np.float32
            flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        if values.dtype.kind == "f":
            return pa.array(values.astype(np.float32, copy=False))
        return pa.array(values)
    return pa.array(list(values))


def kept_array(name: str, values: list[Any]) -> tuple[pa.Array, pa.Field]:
    """A kept input field as its ``kept:<name>`` column: typed when Arrow gives the values back
    as they were (not for mixed types, or dicts with different keys), else JSON text."""
    try:
        array = pa.array(values)
        if array.to_pylist() == values:
            return array, pa.field(KEPT_PREFIX + name, array.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    field = pa.field(KEPT_PREFIX + name, pa.string(), metadata={KEPT_ENCODING_KEY: b"json"})
    return kept_json(values), field


def kept_json(values: list[Any]) -> pa.Array:
    """Kept values as JSON text, for a field Arrow cannot type (decoded again on merge)."""
    return pa.array([json.dumps(v, ensure_ascii=False, default=str) for v in values], pa.string())


def build_table(
    rows: Sequence[int],
    ids: Sequence[Any],
    columns: dict[str, Any],
    errors: list[dict],
    kept: dict[str, list[Any]] | None = None,
) -> pa.Table:
    """A unit's part: ``row``, ``id``, the task's columns, then the ``kept`` input fields."""
    id_values, id_field = id_array(ids)
    arrays = [pa.array(rows, pa.int64()), id_values]
    fields = [pa.field("row", pa.int64()), id_field]
    for name, values in columns.items():
        array = column_array(values)
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    for name, values in (kept or {}).items():
        if name in columns:  # a custom task's column; the built-in ones are refused up front
            raise UserError(
                f"output.keep_fields names {name!r}, a column the task writes itself. HINT: "
                "keep other fields, or rename that input field."
            )
        array, field = kept_array(name, values)
        arrays.append(array)
        fields.append(field)
    metadata = {ERRORS_KEY: json.dumps(errors, ensure_ascii=False).encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def write_part(
    run_dir: Path,
    unit: int,
    table: pa.Table,
    tag: str | None = None,
    before_rename: Callable[[], None] | None = None,
) -> Path:
    """The unit's part, or with ``tag`` one of its fragments."""
    path = part_path(run_dir, unit) if tag is None else fragment_path(run_dir, unit, tag)
    return write_table(path, table, before_rename)


def write_table(
    path: Path, table: pa.Table, before_rename: Callable[[], None] | None = None
) -> Path:
    """An Arrow IPC file and its checksum (``checksums``), written atomically (``atomic_path``:
    ``before_rename`` may refuse it)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue()
    with atomic_path(path, before_rename) as tmp, pa.OSFile(str(tmp), "wb") as out:
        out.write(payload)
        out.write(sealed(payload))
    return path


def read_table(path: Path) -> pa.Table:
    """A part or fragment (memory-mapped, not copied), once its checksum matches; raises
    ``ChecksumError``, ``OSError`` or Arrow's error when it cannot be trusted."""
    with pa.memory_map(str(path)) as source:
        data = source.read_buffer()
    return pa.ipc.open_file(unsealed(data)).read_all()


def read_part(path: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The part's table and its error records."""
    try:
        table = read_table(path)
    except (OSError, pa.ArrowException, ChecksumError) as e:
        raise UserError(
            f"{path}: cannot read this part file ({type(e).__name__}: {e}). HINT: run the same "
            "command again: its rows are recomputed."
        ) from None
    return table, read_errors(table)


def held_rows(path: Path) -> list[int] | None:
    """The rows a part or fragment holds (results and errors), or None when it cannot be
    trusted: cut short, or a batch whose checksum does not match."""
    try:
        table = read_table(path)
    except (OSError, pa.ArrowException, ChecksumError, ValueError):
        return None
    return table.column("row").to_pylist() + [e["row"] for e in read_errors(table)]


def read_errors(table: pa.Table) -> list[dict[str, Any]]:
    """The part's error records: ``{"row", "id", "error"}`` for each input that did not run."""
    return json.loads((table.schema.metadata or {}).get(ERRORS_KEY, b"[]"))


def python_ids(table: pa.Table) -> list[Any]:
    """The part's ids as they were in the input (ints, strings, or a mix)."""
    field = table.schema.field("id")
    ids = table.column("id").to_pylist()
    if (field.metadata or {}).get(ID_ENCODING_KEY) == b"json":
        return [json.loads(i) for i in ids]
    return ids


def is_kept(column: str) -> bool:
    return column.startswith(KEPT_PREFIX)


def is_json(field: pa.Field) -> bool:
    return (field.metadata or {}).get(KEPT_ENCODING_KEY) == b"json"


def kept_values(table: pa.Table, column: str) -> list[Any]:
    """A kept input field's values as they were in the input."""
    values = table.column(column).to_pylist()
    if is_json(table.schema.field(column)):
        return [json.loads(v) for v in values]
    return values


def combine_parts(tables: Sequence[pa.Table]) -> pa.Table:
    """One part of a unit's fragments, in row order. Each fragment encodes its ids and kept
    fields as suits its own values; they are decoded and encoded again as one. The task's
    columns are concatenated as they are (fragments without rows have none)."""
    filled = [t for t in tables if t.num_rows]
    errors = sorted((e for t in tables for e in read_errors(t)), key=lambda e: e["row"])
    if not filled:
        return build_table([], [], {}, errors)
    rows = np.concatenate([t.column("row").to_numpy() for t in filled])
    order = np.argsort(rows, kind="stable")
    ids = [i for t in filled for i in python_ids(t)]
    first = filled[0]
    task = [n for n in first.column_names if n not in ("row", "id") and not is_kept(n)]
    columns = {
        name: pa.concat_tables(
            [pa.table({name: t.column(name)}) for t in filled], promote_options="permissive"
        )
        .column(name)
        .combine_chunks()
        .take(pa.array(order))
        for name in task
    }
    kept = {
        n[len(KEPT_PREFIX) :]: [v for t in filled for v in kept_values(t, n)]
        for n in first.column_names
        if is_kept(n)
    }
    return build_table(
        rows[order].tolist(),
        [ids[i] for i in order],
        columns,
        errors,
        {name: [values[i] for i in order] for name, values in kept.items()},
    )


def unit_files(run_dir: Path) -> dict[int, list[Path]]:
    """Each unit's part and fragments, by unit, the part (if any) first."""
    files: dict[int, list[Path]] = {}
    for path in sorted(_files(run_dir), key=lambda p: p.name):  # unit-N.arrow, then its .f-*
        if m := PART_NAME.match(path.name) or FRAGMENT_NAME.match(path.name):
            files.setdefault(int(m.group(1)), []).append(path)
    return files


def counted(paths: list[Path]) -> list[Path]:
    """A unit's files that count: its part when it has one, else its fragments."""
    return paths[:1] if paths and is_part(paths[0]) else paths


def is_part(path: Path) -> bool:
    """Whether ``path`` is a unit's (whole) part, not a fragment."""
    return PART_NAME.match(path.name) is not None


def finished_units(run_dir: Path) -> set[int]:
    return {int(m.group(1)) for p in _files(run_dir) if (m := PART_NAME.match(p.name))}
