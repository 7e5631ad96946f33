"""Part files: each finished work unit is one Arrow IPC file under ``<run dir>/parts/``.

A part holds the unit's results as columns: ``row`` (int64), ``id``, then the task's fields in
binary form (embeddings as a fixed-size list of float32, scores as float32, text as UTF-8).
Inputs that could not be run are not rows of the table; they are listed, with the reason, in
the file's schema metadata under ``ddpinfer.errors``. A part is written atomically: a unit is
done exactly when its part file exists.

Ids keep their type: an ``int64`` column when all of a part's ids are integers, ``string`` when
all are strings, and for a mix, strings holding each id as JSON (field metadata says so).

Input fields kept for the output (``output.keep_fields``) follow as ``kept:<name>`` columns (a
prefix, so that no input field can clash with ``row``): typed as Arrow infers them when that
gives the values back unchanged, else as JSON text (field metadata says so), decoded on merge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ddpinfer.atomic import atomic_path
from ddpinfer.errors import UserError

PART_NAME = re.compile(r"^unit-(\d{6,})\.arrow$")
ERRORS_KEY = b"ddpinfer.errors"
ID_ENCODING_KEY = b"ddpinfer.id"
KEPT_PREFIX = "kept:"
KEPT_ENCODING_KEY = b"ddpinfer.kept"


def parts_dir(run_dir: Path) -> Path:
    return run_dir / "parts"


def part_path(run_dir: Path, unit: int) -> Path:
    return parts_dir(run_dir) / f"unit-{unit:06d}.arrow"


def id_array(ids: Sequence[Any]) -> tuple[pa.Array, pa.Field]:
    if all(isinstance(i, int) for i in ids):
        return pa.array(ids, pa.int64()), pa.field("id", pa.int64())
    if all(isinstance(i, str) for i in ids):
        return pa.array(ids, pa.string()), pa.field("id", pa.string())
    encoded = [json.dumps(i) for i in ids]
    return pa.array(encoded, pa.string()), pa.field(
        "id", pa.string(), metadata={ID_ENCODING_KEY: b"json"}
    )


def column_array(values: Any) -> pa.Array:
    """A task column as Arrow: 2-D arrays as fixed-size lists (embeddings), float arrays as
    float32, anything else as Arrow infers it."""
    if isinstance(values, np.ndarray):
        if values.ndim == 2:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
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


def write_part(run_dir: Path, unit: int, table: pa.Table) -> Path:
    path = part_path(run_dir, unit)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def read_part(path: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The part's table (memory-mapped, not copied) and its error records."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as e:
        raise UserError(
            f"{path}: cannot read this part file ({type(e).__name__}: {e}). HINT: delete it and "
            "run the same command again: its unit is recomputed."
        ) from None
    meta = table.schema.metadata or {}
    return table, json.loads(meta.get(ERRORS_KEY, b"[]"))


def readable(path: Path) -> bool:
    """Whether a part file opens (its footer and schema read; no data): a part cut short by a
    disk that filled, or by a filesystem without atomic renames, does not."""
    try:
        with pa.memory_map(str(path)) as source:
            pa.ipc.open_file(source).schema  # noqa: B018
        return True
    except (OSError, pa.ArrowException):
        return False


def drop_unreadable_parts(run_dir: Path) -> list[int]:
    """Delete the part files that do not open (their units are then recomputed); returns their
    units."""
    dropped = [u for u in sorted(finished_units(run_dir)) if not readable(part_path(run_dir, u))]
    for unit in dropped:
        part_path(run_dir, unit).unlink(missing_ok=True)
    return dropped


def finished_units(run_dir: Path) -> set[int]:
    folder = parts_dir(run_dir)
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := PART_NAME.match(p.name))}
