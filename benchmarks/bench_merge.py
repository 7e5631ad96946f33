"""Rank 0's merge at scale: memory and records/s for 10k vs 1M records, and output sizes.

Writes part files as ddpinfer's ranks do (Arrow IPC, units of 4096 rows), then merges them in a
fresh process per case, so each case's peak memory (``memory_use.peak_rss_mb``) is its own:
- classification records (label, score) to JSON Lines: 10k and 1M records; peak memory of the 1M
  merge against the 10k one, and records/s;
- 384-dim embeddings to Parquet: file size against the raw float32 bytes.

    python benchmarks/bench_merge.py [--big 1000000] [--small 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ddpinfer.plan.work_units import plan_units
from ddpinfer.rundir.parts import build_table, write_part

UNIT = 4096
LABELS = ["negative", "neutral", "positive"]

MERGE_SCRIPT = """
import json, sys, time
from pathlib import Path
from ddpinfer.memory_use import peak_rss_mb
from ddpinfer.results.merge import merge_parts
from ddpinfer.plan.work_units import plan_units
run_dir, out, fmt = Path(sys.argv[1]), Path(sys.argv[4]), sys.argv[5]
rows, unit = int(sys.argv[2]), int(sys.argv[3])
began = time.perf_counter()
summary = merge_parts(run_dir, plan_units(rows, unit), out, fmt)
seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds, "written": summary.written,
                  "rss_mb": peak_rss_mb()}))
"""


def write_parts(run_dir: Path, rows: int, make_columns) -> None:
    rng = np.random.default_rng(0)
    for i, unit in enumerate(plan_units(rows, UNIT)):
        ids = [f"doc-{r}" for r in unit]
        write_part(run_dir, i, build_table(unit, ids, make_columns(rng, len(unit)), []))


def classification(rng: np.random.Generator, n: int) -> dict:
    return {
        "label": [LABELS[i] for i in rng.integers(0, 3, n)],
        "score": rng.random(n, dtype=np.float32),
    }


def embeddings(rng: np.random.Generator, n: int) -> dict:
    return {"embedding": rng.standard_normal((n, 384), dtype=np.float32)}


def merge(run_dir: Path, rows: int, out: Path, fmt: str) -> dict:
    cmd = [sys.executable, "-c", MERGE_SCRIPT, str(run_dir), str(rows), str(UNIT), str(out), fmt]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--embeddings", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        results = {}
        for rows in (args.small, args.big):
            write_parts(tmp / f"cls{rows}", rows, classification)
            results[rows] = merge(tmp / f"cls{rows}", rows, tmp / f"cls{rows}.jsonl", "jsonl")
            r = results[rows]
            print(
                f"classification, {rows} records -> JSONL: {r['seconds']:.2f}s, "
                f"{rows / r['seconds']:,.0f} records/s, peak RSS {r['rss_mb']:.0f} MB"
            )
        ratio = results[args.big]["rss_mb"] / results[args.small]["rss_mb"]
        print(f"peak memory, {args.big} vs {args.small} records: {ratio:.2f}x")
        n = args.embeddings
        write_parts(tmp / "emb", n, embeddings)
        for fmt in ("parquet", "npy", "jsonl"):
            out = tmp / f"emb.{fmt}"
            r = merge(tmp / "emb", n, out, fmt)
            raw = n * 384 * 4
            print(
                f"embeddings, {n} x 384 -> {fmt}: {out.stat().st_size / raw:.3f}x the raw float32 "
                f"bytes, {n / r['seconds']:,.0f} records/s"
            )


if __name__ == "__main__":
    main()
