"""Rank 0's last step: stream the part files, in row order, into one verified output file.

Memory stays bounded by one unit at a time (its part, or its fragments combined). Every row must
appear exactly once (as a result or as an error), or the merge stops naming what is missing or
duplicated, and no output is written.
Results are never re-parsed: Arrow columns go to Parquet and to a Hugging Face ``datasets`` folder
as they are, to ``.npy`` as raw values (float32, or task.precision's dtype), and to JSON Lines
through orjson (float32 values in their shortest form; int8 and uint8 as integers). Input
fields kept with ``output.keep_fields`` come right after the id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ddpinfer.errors import UserError
from ddpinfer.plan.outputs import side_file
from ddpinfer.results import openai_batch
from ddpinfer.rundir.atomic import atomic_dir, atomic_path, atomic_text
from ddpinfer.rundir.parts import (
    COMPACT_DTYPES,
    ERRORS_KEY,
    ID_ENCODING_KEY,
    KEPT_PREFIX,
    combine_parts,
    counted,
    is_json,
    is_kept,
    kept_json,
    kept_values,
    python_ids,
    read_errors,
    read_part,
    unit_files,
)


class MergeError(UserError):
    """The parts do not cover every input exactly once."""


def _check_complete(files: dict[int, list[Path]], units: list[range]) -> None:
    missing = [i for i in range(len(units)) if i not in files]
    if missing:
        shown = ", ".join(
            f"unit {i} (rows {units[i].start}-{units[i].stop - 1})" for i in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MergeError(f"{len(missing)} work unit(s) have no results: {shown}{more}.")


def _checked_parts(
    files: dict[int, list[Path]], units: list[range]
) -> Iterator[tuple[pa.Table, list[dict]]]:
    """Each unit's table (its part, or its fragments combined) and error records, after
    checking they hold exactly its rows."""
    _check_complete(files, units)
    for i, unit in enumerate(units):
        paths = files[i]
        if len(paths) == 1:
            table, errors = read_part(paths[0])
        else:
            table = combine_parts([read_part(path)[0] for path in paths])
            errors = read_errors(table)
        rows = table.column("row").to_numpy()
        every = np.concatenate([rows, np.array([e["row"] for e in errors], dtype=np.int64)])
        if len(every) != len(unit) or not np.array_equal(
            np.sort(every), np.arange(unit.start, unit.stop)
        ):
            raise MergeError(_describe_mismatch(paths, unit, every, table))
        yield table, errors


def _describe_mismatch(paths: list[Path], unit: range, rows: np.ndarray, table: pa.Table) -> str:
    values, counts = np.unique(rows, return_counts=True)
    dup = set(values[counts > 1].tolist())
    ids = dict(zip(table.column("row").to_pylist(), python_ids(table)))
    missing = sorted(set(unit) - set(values.tolist()))
    return (
        f"{', '.join(map(str, paths))}: expected rows {unit.start}-{unit.stop - 1} once each; "
        f"missing rows {missing[:10]}, duplicated ids {[ids.get(r, r) for r in dup][:10]}, "
        f"unexpected rows {[r for r in values.tolist() if r not in unit][:10]}. "
        f"HINT: delete {'this file' if len(paths) == 1 else 'these files'} and re-run the same "
        "command to recompute them."
    )


def _task_fields(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if n not in ("row", "id") and not is_kept(n)]


def _kept_columns(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if is_kept(n)]


def _kept_names(table: pa.Table) -> list[str]:
    """The kept input fields' own names (their columns without the ``kept:`` prefix)."""
    return [n[len(KEPT_PREFIX) :] for n in _kept_columns(table)]


def _output_names(table: pa.Table) -> list[str]:
    """``id``, the kept input fields, then the task's fields."""
    return ["id", *_kept_names(table), *_task_fields(table)]


@dataclass(frozen=True)
class MergeSummary:
    written: int
    errors: int
    errors_path: Path


def merge_parts(
    run_dir: Path,
    units: list[range],
    output: Path,
    fmt: str,
    before_commit: Callable[[], None] = lambda: None,
) -> MergeSummary:
    """Write ``output`` atomically from the parts, and the inputs that could not be run to
    ``<run dir>/errors.jsonl`` (id, row and reason), also atomically: errors.jsonl is renamed
    into place first and the output last, so an output is never seen beside another run's
    errors. ``before_commit`` runs before the renames, and may stop them by raising."""
    errors_path = run_dir / "errors.jsonl"
    writer_class = WRITERS[fmt]
    written = errors = 0
    with contextlib.ExitStack() as stack:  # left in reverse: errors.jsonl renamed first
        tmp = stack.enter_context((atomic_dir if fmt == "hf_dataset" else atomic_path)(output))
        side = side_file(output, fmt)
        ids_tmp = stack.enter_context(atomic_path(side)) if side is not None else None
        errors_file = stack.enter_context(atomic_text(errors_path))
        files = {unit: counted(paths) for unit, paths in unit_files(run_dir).items()}
        _check_complete(files, units)  # before a writer reads every unit's files
        writer = writer_class(tmp, ids_tmp, files, units)
        try:
            for table, unit_errors in _checked_parts(files, units):
                for record in unit_errors:
                    errors_file.write(json.dumps(record, ensure_ascii=False) + "\n")
                if unit_errors and hasattr(writer, "errors"):  # a format with an error file
                    writer.errors(unit_errors)
                errors += len(unit_errors)
                if table.num_rows:
                    writer.write(table)
                    written += table.num_rows
        finally:
            writer.close()
        before_commit()
    return MergeSummary(written, errors, errors_path)


class JsonlWriter:
    def __init__(
        self, tmp: Path, ids_tmp: Path | None, files: dict[int, list[Path]], units: list[range]
    ):
        self.file = open(tmp, "wb")

    def write(self, table: pa.Table) -> None:
        keys = _output_names(table)
        kept = [kept_values(table, c) for c in _kept_columns(table)]
        task = [_json_values(table.column(k)) for k in _task_fields(table)]
        columns = [python_ids(table), *kept, *task]
        _write_lines(self.file, keys, columns, orjson.OPT_SERIALIZE_NUMPY)

    def close(self) -> None:
        self.file.close()


def _write_lines(file: Any, keys: list[str], columns: list[Any], option: int = 0) -> None:
    """One JSON object per row, written as it is made: each line is freed before the next is
    encoded (holding a part's lines for one ``join`` made orjson 4x slower, in fresh memory)."""
    write, dumps, option = file.write, orjson.dumps, option | orjson.OPT_APPEND_NEWLINE
    for row in zip(*columns):
        write(dumps(dict(zip(keys, row)), option=option))


def _json_values(column: pa.ChunkedArray) -> Any:
    """Values orjson can write without loss and without a Python float per element: numpy
    rows for embeddings, numpy float32 scalars for scores (written in shortest form)."""
    array = column.combine_chunks()
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        return array.flatten().to_numpy().reshape(len(array), kind.list_size)
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        return array.to_numpy(zero_copy_only=False)
    values = array.to_pylist()
    return [_float32_scalars(v, kind) for v in values] if _has_float32(kind) else values


def _has_float32(kind: pa.DataType) -> bool:
    if kind == pa.float32():
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _has_float32(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_float32(kind.field(i).type) for i in range(kind.num_fields))
    return False


def _float32_scalars(value: Any, kind: pa.DataType) -> Any:
    """Nested values with their float32 fields as numpy scalars, so orjson writes the float32
    (0.25341), not the float64 it widens to (0.2534100115299225)."""
    if value is None:
        return None
    if kind == pa.float32():
        return np.float32(value)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return [_float32_scalars(v, kind.value_type) for v in value]
    if pa.types.is_struct(kind):
        return {f.name: _float32_scalars(value[f.name], f.type) for f in kind}
    return value


class _ArrowTableWriter:
    """Writes parts as output tables (``_output_table``) of one schema, fixed by the first part,
    to the Arrow writer ``_open`` makes: the id and kept-field types every part agrees on are
    found before the first write."""

    def __init__(self, files: dict[int, list[Path]], units: list[range]):
        self.id_type, self.kept_types = _output_types(files, units)
        self.writer: Any = None
        self.schema: pa.Schema | None = None

    def _open(self, schema: pa.Schema) -> Any:
        raise NotImplementedError

    def write(self, table: pa.Table) -> None:
        out = _output_table(table, self.id_type, self.kept_types)
        if self.writer is None:
            self.schema = out.schema
            self.writer = self._open(out.schema)
        self.writer.write_table(out.cast(self.schema))


class ParquetWriter(_ArrowTableWriter):
    """Embeddings as a list of float32 (about their raw bytes); ids as int64 when every id is
    an integer, else as strings (an integer id 7 becomes "7")."""

    def __init__(
        self, tmp: Path, ids_tmp: Path | None, files: dict[int, list[Path]], units: list[range]
    ):
        super().__init__(files, units)
        self.tmp = tmp

    def _open(self, schema: pa.Schema) -> Any:
        import pyarrow.parquet as pq

        strings = [f.name for f in schema if pa.types.is_string(f.type)]
        return pq.ParquetWriter(self.tmp, schema, use_dictionary=strings)

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is not None:
            self.writer.close()
        else:  # no results at all: still a valid, empty file
            pq.write_table(pa.table({"id": pa.array([], self.id_type)}), self.tmp)


def _output_table(
    table: pa.Table, id_type: pa.DataType, kept_types: dict[str, pa.DataType | None]
) -> pa.Table:
    """A part as output columns: ``id`` as ``id_type`` (mixed ids as strings), the kept input
    fields as their ``kept_types``, then the task's fields; the part's row numbers and metadata
    stay behind."""
    ids = table.column("id")
    field = table.schema.field("id")
    if (field.metadata or {}).get(ID_ENCODING_KEY) == b"json":
        ids = pa.array([str(i) for i in python_ids(table)], pa.string())
    ids = ids.cast(id_type)
    kept = [_kept_output(table, c, kept_types[c]) for c in _kept_columns(table)]
    return pa.Table.from_arrays(
        [ids, *kept, *(table.column(n) for n in _task_fields(table))],
        names=_output_names(table),
    )


def _kept_output(table: pa.Table, column: str, kind: pa.DataType | None) -> Any:
    """A kept column as the type it has in every part (``None``: JSON text in all of them)."""
    if kind is None:
        if is_json(table.schema.field(column)):
            return table.column(column)
        return kept_json(kept_values(table, column))
    return table.column(column).cast(kind)  # null-typed (all values null) in this part: typed


def _output_types(
    files: dict[int, list[Path]], units: list[range]
) -> tuple[pa.DataType, dict[str, pa.DataType | None]]:
    """From one pass over the parts' schemas: the id column's type (int64 when every part's ids
    are integers, else string) and each kept column's type: the one type its parts agree on
    (parts where every value is null aside), else ``None`` for JSON text (a field that is a
    number in one part and a string in another)."""
    id_type = pa.int64()
    kinds: dict[str, set[Any]] = {}
    for schema in _part_schemas(files, units):
        if schema.field("id").type != pa.int64():
            id_type = pa.string()
        for field in (f for f in schema if is_kept(f.name)):
            seen = kinds.setdefault(field.name, set())
            if field.type != pa.null():
                seen.add("json" if is_json(field) else field.type)
    types: dict[str, pa.DataType | None] = {}
    for name, seen in kinds.items():
        only = next(iter(seen)) if len(seen) == 1 else None
        types[name] = pa.null() if not seen else None if only == "json" else only
    return id_type, types


class HfDatasetWriter(_ArrowTableWriter):
    """A folder that ``datasets.load_from_disk`` opens as a ``Dataset``: one Arrow stream file
    (``datasets``' own on-disk form, memory-mapped when loaded), ``state.json`` naming it and
    ``dataset_info.json`` (features are read from the Arrow schema). Columns as for Parquet."""

    DATA_FILE = "data-00000-of-00001.arrow"

    def __init__(
        self, tmp: Path, ids_tmp: Path | None, files: dict[int, list[Path]], units: list[range]
    ):
        super().__init__(files, units)
        self.folder = tmp
        self.sink = pa.OSFile(str(tmp / self.DATA_FILE), "wb")

    def _open(self, schema: pa.Schema) -> Any:
        return pa.ipc.new_stream(self.sink, schema)

    def close(self) -> None:
        if self.writer is None:  # no results at all: still a loadable, empty dataset
            self.writer = pa.ipc.new_stream(self.sink, pa.schema([("id", self.id_type)]))
        self.writer.close()
        self.sink.close()
        state = {
            "_data_files": [{"filename": self.DATA_FILE}],
            "_fingerprint": file_sha256(self.folder / self.DATA_FILE)[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2))
        info = {"description": "ddpinfer output", "citation": "", "homepage": "", "license": ""}
        (self.folder / "dataset_info.json").write_text(json.dumps(info, indent=2))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _part_schemas(files: dict[int, list[Path]], units: list[range]) -> Iterator[pa.Schema]:
    for i in range(len(units)):
        for path in files[i]:
            yield read_part(path)[0].schema


class NpyWriter:
    """One float32 ``[N, dim]`` matrix of the embeddings, in input order, and the id (and kept
    input fields) of each matrix row in ``<stem>.ids.jsonl`` beside it. N counts the inputs
    that ran (errors are in errors.jsonl), so it is known from the parts' error lists before
    any value is read."""

    def __init__(
        self, tmp: Path, ids_tmp: Path | None, files: dict[int, list[Path]], units: list[range]
    ):
        errors = sum(
            len(json.loads((s.metadata or {})[ERRORS_KEY])) for s in _part_schemas(files, units)
        )
        self.rows = sum(len(unit) for unit in units) - errors
        self.file = open(tmp, "wb")
        self.ids_file = open(ids_tmp, "wb")  # type: ignore[arg-type]
        self.dim: int | None = None
        self.written = 0

    def write(self, table: pa.Table) -> None:
        fields = [n for n in _task_fields(table) if pa.types.is_fixed_size_list(table[n].type)]
        if not fields:
            raise MergeError("output.format=npy needs an embedding column (task=embed)")
        matrix = _json_values(table.column(fields[0]))
        if matrix.dtype not in COMPACT_DTYPES:  # task.precision's dtype, else float32
            matrix = matrix.astype(np.float32, copy=False)
        descr = matrix.dtype.newbyteorder("<").str
        if self.dim is None:
            self.dim = matrix.shape[1]
            np.lib.format.write_array_header_1_0(
                self.file,
                {"descr": descr, "fortran_order": False, "shape": (self.rows, self.dim)},
            )
        self.file.write(np.ascontiguousarray(matrix, dtype=descr).tobytes())
        keys = ["id", *_kept_names(table)]
        columns = [python_ids(table), *(kept_values(table, c) for c in _kept_columns(table))]
        _write_lines(self.ids_file, keys, columns)
        self.written += len(matrix)

    def close(self) -> None:
        if self.dim is None and self.rows == 0:
            np.save(self.file, np.zeros((0, 0), np.float32))
        self.file.close()
        self.ids_file.close()


WRITERS = {
    "jsonl": JsonlWriter,
    "parquet": ParquetWriter,
    "npy": NpyWriter,
    "hf_dataset": HfDatasetWriter,
    **openai_batch.writers(),
}
