"""Read amplification: rows decoded ÷ rows run, for one rank of W, reading its windows as the
run does (``RowStream`` with the plan's seek points) against the one forward pass it replaced
(every row from the rank's first window on decoded).

The rank takes every W-th work unit (what weighted factoring hands each of W equal ranks once
windows are single units; larger windows only lower the old pass's waste). Printed per format
and W = 1, 2 and 100 (simulated: rank 0's reads only): rows decoded per row run, and seconds.

    python benchmarks/bench_read_amplification.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import ddpinfer.inputs.readers as readers
import ddpinfer.inputs.row_stream as row_stream
from ddpinfer.inputs.readers import Row, open_spec, read_rows
from ddpinfer.inputs.row_stream import RowStream
from ddpinfer.inputs.scan import scan
from ddpinfer.plan.work_units import auto_unit_size, plan_units


class ForwardPass:
    """The reader before: one pass from the first window on, every row decoded."""

    def __init__(self, spec) -> None:
        self.spec, self.rows, self.next = spec, None, 0

    def read(self, rows: range) -> Iterator[Row]:
        if self.rows is None or rows.start < self.next:
            self.rows, self.next = read_rows(self.spec, range(rows.start, 2**62)), rows.start
        for row in self.rows:
            self.next = row.index + 1
            if row.index >= rows.start:
                yield row
            if self.next >= rows.stop:
                return


def write_inputs(folder: Path, rows: int) -> dict[str, Path]:
    texts = [f"record {i} " + "word " * (i % 40) for i in range(rows)]
    jsonl = folder / "in.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    parquet = folder / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "text": texts}), parquet)
    return {"jsonl": jsonl, "parquet": parquet}


def one_rank(make_stream, units: list[range], world_size: int) -> tuple[float, float]:
    decoded = [0]
    real = readers.make_row

    def counting(*args, **kwargs):
        decoded[0] += 1
        return real(*args, **kwargs)

    readers.make_row = row_stream.make_row = counting
    try:
        stream = make_stream()
        began = time.perf_counter()
        run = sum(len(list(stream.read(units[u]))) for u in range(0, len(units), world_size))
        return decoded[0] / run, time.perf_counter() - began
    finally:
        readers.make_row = row_stream.make_row = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_inputs(Path(tmp), args.rows)
        print(f"{args.rows:,} rows; rank 0 of W, every W-th unit")
        print(
            f"{'format':>8} {'W':>4} {'old decoded/run':>16} {'new':>6} {'old s':>7} {'new s':>7}"
        )
        for fmt, path in files.items():
            spec = open_spec(str(path), "auto", "text", "id")
            unit_size = auto_unit_size(args.rows)
            found = scan(spec, unit_size)
            units = plan_units(found.num_rows, unit_size)
            seek = found.seek.at_rows([u.start for u in units]) if found.seek else None
            for world_size in (1, 2, 100):
                old, old_s = one_rank(lambda s=spec: ForwardPass(s), units, world_size)
                new, new_s = one_rank(lambda s=spec, k=seek: RowStream(s, k), units, world_size)
                print(
                    f"{fmt:>8} {world_size:>4} {old:>16.2f} {new:>6.2f} {old_s:>7.2f} {new_s:>7.2f}"
                )


if __name__ == "__main__":
    main()
