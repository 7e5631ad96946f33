"""Rank 0's last step: stream the part files, in row order, into one verified output file.

Memory stays bounded by one part at a time. Every row must appear exactly once, or the merge
stops naming what is missing or duplicated, and no output file is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpinfer.atomic import atomic_path, atomic_text
from ddpinfer.errors import UserError
from ddpinfer.parts import finished_units, part_path, read_part


class MergeError(UserError):
    """The parts do not cover every input exactly once."""


def output_format(path: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "jsonl"


def _checked_records(run_dir: Path, units: list[range]) -> Iterator[list[dict[str, Any]]]:
    """Each unit's records, row field removed, after checking they are exactly its rows."""
    done = finished_units(run_dir)
    missing = [i for i in range(len(units)) if i not in done]
    if missing:
        shown = ", ".join(
            f"unit {i} (rows {units[i].start}-{units[i].stop - 1})" for i in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MergeError(f"{len(missing)} work unit(s) have no results: {shown}{more}.")
    for i, unit in enumerate(units):
        records = list(read_part(part_path(run_dir, i)))
        rows = [r["row"] for r in records]
        if rows != list(unit):
            raise MergeError(_describe_mismatch(part_path(run_dir, i), unit, rows, records))
        for record in records:
            if "error" not in record:
                del record["row"]
        yield records


def _describe_mismatch(path: Path, unit: range, rows: list[int], records: list[dict]) -> str:
    seen: dict[int, int] = {}
    for r in rows:
        seen[r] = seen.get(r, 0) + 1
    dup = [r for r, c in seen.items() if c > 1]
    ids = {r: rec.get("id") for r, rec in zip(rows, records)}
    missing = [r for r in unit if r not in seen]
    return (
        f"{path}: expected rows {unit.start}-{unit.stop - 1} once each; "
        f"missing rows {missing[:10]}, duplicated ids {[ids[r] for r in dup][:10]}, "
        f"unexpected rows {[r for r in seen if r not in unit][:10]}. "
        f"HINT: delete this part file and re-run the same command to recompute it."
    )


@dataclass(frozen=True)
class MergeSummary:
    written: int
    errors: int
    errors_path: Path


def merge_parts(run_dir: Path, units: list[range], output: Path, fmt: str) -> MergeSummary:
    """Write ``output`` atomically from the parts, and the inputs that could not be run to
    ``<run dir>/errors.jsonl`` (id, row and reason), also atomically."""
    errors_path = run_dir / "errors.jsonl"
    counts = {"written": 0, "errors": 0}
    with atomic_text(errors_path) as errors_file, atomic_path(output) as tmp:

        def results() -> Iterator[list[dict[str, Any]]]:
            for records in _checked_records(run_dir, units):
                good = []
                for record in records:
                    if "error" in record:
                        errors_file.write(json.dumps(record, ensure_ascii=False) + "\n")
                        counts["errors"] += 1
                    else:
                        good.append(record)
                counts["written"] += len(good)
                yield good

        if fmt == "parquet":
            _write_parquet(tmp, results())
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for records in results():
                    for record in records:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return MergeSummary(counts["written"], counts["errors"], errors_path)


def _write_parquet(path: Path, chunks: Iterator[list[dict[str, Any]]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, written = None, 0
    try:
        for records in chunks:
            if not records:
                continue
            table = pa.Table.from_pylist(records, schema=writer.schema if writer else None)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            written += len(records)
        if writer is None:  # no inputs: still a valid, empty file
            pq.write_table(pa.table({"id": pa.array([], pa.int64())}), path)
    finally:
        if writer is not None:
            writer.close()
    return written
