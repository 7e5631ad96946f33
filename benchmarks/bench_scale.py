"""How ddpinfer's own work grows with rows and ranks, and what it projects to at 1e9 rows on
1,000 ranks. Only ddpinfer's work is timed: the job's task is ``examples/word_count_task.py``.

Measured on ``--rows`` JSON Lines records (short texts, string ids):
- rank 0's preflight scan, fresh and from the run directory's cache (inputs unchanged);
- one rank of 100 reading its windows (every 100th unit): rows decoded per row run, rows/s;
- store operations per claim at W = 1,000 (``bench_claims.py``'s simulation);
- a re-run with nothing to do, on a job of ``--job-rows`` and of 4x as many rows run once
  before (one process): its fixed cost and its cost per row.
Then a projection for 1e9 rows on 1,000 ranks from those rates, naming the longest phase.

    python benchmarks/bench_scale.py [--rows 1000000] [--job-rows 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_claims import PerRankBoard, ops_per_claim, summed_board  # noqa: E402
from bench_read_amplification import one_rank  # noqa: E402

from ddpinfer.inputs.readers import open_spec  # noqa: E402
from ddpinfer.inputs.row_stream import RowStream  # noqa: E402
from ddpinfer.inputs.scan import scan  # noqa: E402
from ddpinfer.inputs.scan_cache import cached_scan, store  # noqa: E402
from ddpinfer.plan.work_units import auto_unit_size, plan_units  # noqa: E402

TARGET_ROWS, TARGET_RANKS = 10**9, 1000


def write_jsonl(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"doc-{i}", "text": f"record {i} " + "word " * (i % 20)}))
            f.write("\n")
    return path


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def run_job(data: Path, out: Path, cwd: Path) -> float:
    """One in-process run of the word-count job; its wall time."""
    from hydra import compose, initialize_config_dir

    from ddpinfer.config import register_configs, to_config
    from ddpinfer.runner import run

    register_configs()
    overrides = ["task=custom", "task.target=examples.word_count_task:WordCountTask",
                 f"data.path={data}", f"output.path={out}", f"run.name={data.stem}",
                 "data.id_field=id"]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    os.chdir(cwd)
    return timed(lambda: run(cfg, environ={}))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--job-rows", type=int, default=20_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = write_jsonl(tmp / "in.jsonl", args.rows)
    spec = open_spec(str(data), "auto", "text", "id")
    unit = auto_unit_size(args.rows)
    found, scan_s = timed(lambda: scan(spec, 64))
    store(spec, tmp, found)
    (_, scanned), cached_s = timed(lambda: cached_scan(spec, 64, tmp))
    assert not scanned
    units = plan_units(found.num_rows, unit)
    seek = found.seek.at_rows([u.start for u in units])
    amplification, read_s = one_rank(lambda: RowStream(spec, seek), units, 100)
    read_rate = sum(len(u) for u in units[::100]) / read_s
    old_ops = ops_per_claim(PerRankBoard, 1000, 20)
    new_ops = ops_per_claim(summed_board, 1000, 200)
    reruns = {}  # rows -> (first run, re-run) seconds, at two sizes: a fixed cost and a slope
    for rows in (args.job_rows, 4 * args.job_rows):
        job = write_jsonl(tmp / f"job{rows}.jsonl", rows)
        reruns[rows] = [run_job(job, tmp / f"out{rows}.jsonl", tmp) for _ in range(2)]
    (small, (first_s, rerun_s)), (large, (_, rerun_large_s)) = reruns.items()
    per_row = max(0.0, (rerun_large_s - rerun_s) / (large - small))

    rate = args.rows / scan_s
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"measured on {args.rows:,} rows (JSON Lines), {os.cpu_count()} cores, load {load}")
    print(f"  scan (rank 0):               {rate:,.0f} rows/s")
    print(f"  scan from cache:             {cached_s:.3f} s ({args.rows / cached_s:,.0f} rows/s)")
    print(f"  one rank of 100, its windows: {amplification:.2f} rows decoded per row run, "
          f"{read_rate:,.0f} rows/s")  # fmt: skip
    print(f"  store operations per claim, W=1000: {new_ops:.0f} (before: {old_ops:.0f})")
    print(f"  job of {small:,} rows: {first_s:.1f} s; re-run with nothing to do: "
          f"{rerun_s:.1f} s ({large:,} rows: {rerun_large_s:.1f} s)")  # fmt: skip
    scale = TARGET_ROWS / args.rows
    claims = 65_000  # weighted factoring's claims at 1e9 rows, 1,000 ranks (issue #31's count)
    phases = {
        "rank 0's scan, first run (serial)": TARGET_ROWS / rate,
        "rank 0's scan, resume/requeue (cache)": cached_s * scale,
        "each rank reading its 1e6 rows": TARGET_ROWS / TARGET_RANKS * amplification / read_rate,
        f"store operations for {claims:,} claims": None,
        "re-run with nothing to do (fixed + per row)": rerun_s + per_row * TARGET_ROWS,
    }
    print(f"\nprojection: {TARGET_ROWS:.0e} rows on {TARGET_RANKS:,} ranks")
    for name, seconds in phases.items():
        if seconds is None:
            print(f"  {name:<44} {claims * new_ops:,.0f} ops (before: {claims * old_ops:,.0f})")
        else:
            print(f"  {name:<44} {seconds:>9,.0f} s")
    longest = max((s, n) for n, s in phases.items() if s is not None)
    print(f"  bottleneck: {longest[1]} ({longest[0]:,.0f} s)")


if __name__ == "__main__":
    main()
