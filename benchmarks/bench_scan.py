"""Rank 0's preflight scan (every record read, checked and hashed before any model work): the
fast path against inputs' reader record by record, side by side.

Writes a seeded corpus (``corpus.py`` texts, ids ``doc-N``) as JSON Lines and Parquet, then scans
each, with and without ``data.id_field``, in a fresh process per case (so each peak memory is
its own), alternating the two paths. Prints records/s, the ratio, peak RSS and what 100 million
records would take at that rate.

    python benchmarks/bench_scan.py [--rows 1000000] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import make_texts  # noqa: E402

SCAN_SCRIPT = """
import json, sys, time
from ddpinfer.inputs.scan import scan
from ddpinfer.inputs.readers import open_spec
from ddpinfer.memory_use import peak_rss_mb
path, id_field, reference = sys.argv[1], sys.argv[2] or None, sys.argv[3] == "1"
spec = open_spec(path, "auto", "text", id_field)
began = time.perf_counter()
result = scan(spec, record_by_record=reference)
print(json.dumps({"seconds": time.perf_counter() - began, "rows": result.num_rows,
                  "digest": result.digest,
                  "rss_mb": peak_rss_mb()}))
"""


def write_inputs(tmp: Path, rows: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = make_texts(min(rows, 20_000))
    jsonl = tmp / "corpus.jsonl"
    with open(jsonl, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"doc-{i}", "text": texts[i % len(texts)]}) + "\n")
    parquet = tmp / "corpus.parquet"
    ids = [f"doc-{i}" for i in range(rows)]
    pq.write_table(
        pa.table({"id": ids, "text": [texts[i % len(texts)] for i in range(rows)]}), parquet
    )
    return [jsonl, parquet]


def scan(path: Path, id_field: str, reference: bool) -> dict:
    cmd = [sys.executable, "-c", SCAN_SCRIPT, str(path), id_field, "1" if reference else "0"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        files = write_inputs(Path(name), args.rows)
        print(f"{args.rows:,} records; records/s of the scan (median of {args.reps})")
        for path in files:
            for id_field in ("id", ""):
                runs: dict[bool, list[dict]] = {True: [], False: []}
                for _ in range(args.reps):
                    for reference in (True, False):
                        runs[reference].append(scan(path, id_field, reference))
                assert runs[True][0]["digest"] == runs[False][0]["digest"]
                rate = {
                    k: statistics.median(r["rows"] / r["seconds"] for r in v)
                    for k, v in runs.items()
                }
                rss = {k: max(r["rss_mb"] for r in v) for k, v in runs.items()}
                fast, slow = rate[False], rate[True]
                print(
                    f"{path.suffix[1:]:8s} data.id_field={id_field or 'unset':5s} "
                    f"record by record {slow:9,.0f}/s ({rss[True]:4.0f} MB) | fast path "
                    f"{fast:9,.0f}/s ({rss[False]:4.0f} MB) | {fast / slow:.1f}x; "
                    f"100M records: {1e8 / fast / 60:.1f} min (was {1e8 / slow / 60:.1f})"
                )


if __name__ == "__main__":
    main()
