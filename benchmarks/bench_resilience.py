"""What a stop loses, and what a slow rank costs, on the throughput benchmark's corpus.

- **Work lost to a SIGTERM at 40 % of the inference phase** (torchrun, defaults): a run is
  stopped once 40 % of its inputs are done (as its ranks log them, ``log.level=DEBUG``), then the
  same command runs again. Printed: the share of inputs the re-run computes, against the 60 % a
  stop that lost nothing would leave (the baseline), and the difference: the work lost.
- **One slow rank** (``fault.slow_rank=1``, 2 ranks): rank 1 sleeps before each batch so that it
  runs k times slower than rank 0, for k = 3, 5 and 10. Printed: the inference phase's time
  against the ideal one (the work at the two ranks' combined rate, both measured in the same
  run), and each rank's share of the inputs. The sleep is calibrated from a balanced run and
  rescaled until the measured slowdown is within 10 % of k (up to 3 runs).

    python benchmarks/bench_resilience.py [--rows 4096] [--slow 3 5 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import LAUNCHER, ddpinfer, env, torchrun  # noqa: E402
from corpus import write_corpus  # noqa: E402


def logged_rows(run_dir: Path) -> int:
    total = 0
    for log in (run_dir / "logs").glob("rank*.log"):
        counts = re.findall(r"\((\d+) this attempt\)", log.read_text())
        total += int(counts[-1]) if counts else 0
    return total


def stop_at(tmp: Path, corpus: Path, rows: int, share: float) -> dict:
    run_dir = tmp / "runs" / "stopped"
    args = [f"data.path={corpus}", "data.id_field=id", f"output.path={tmp / 'stopped.jsonl'}",
            f"run.dir={run_dir}", "log.level=DEBUG"]  # fmt: skip
    proc = subprocess.Popen(
        torchrun(2, str(LAUNCHER), *args), cwd=tmp, env=env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    while logged_rows(run_dir) < share * rows:
        if proc.poll() is not None:
            sys.exit("the run ended before it could be stopped: use more --rows")
        time.sleep(0.05)
    at = logged_rows(run_dir)
    os.killpg(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=300)
    done = logged_rows(run_dir)  # what the attempt computed, the batches in flight included
    subprocess.run(torchrun(2, str(LAUNCHER), *args), cwd=tmp, env=env(), check=True,
                   capture_output=True)  # fmt: skip
    stats = [json.loads(p.read_text()) for p in sorted((run_dir / "stats").glob("rank*.json"))]
    rerun = sum(s["rows"] for s in stats)
    return {"code": code, "signalled_at": at, "computed": done, "rerun": rerun}


def slow_rank(tmp: Path, corpus: Path, k: float, balanced: dict, tries: int = 3) -> None:
    r1 = balanced["ranks"][1]
    batch_s = r1["seconds"] / max(1, r1["batches"])
    delay = (k - 1) * batch_s
    for attempt in range(tries):
        slow = ddpinfer(
            tmp, corpus, 2, f"slow{k}-{attempt}", "fault.slow_rank=1", f"fault.delay_s={delay:.4f}"
        )
        rates = [r["real_tokens"] / r["seconds"] for r in slow["ranks"]]
        ideal = slow["real"] / sum(rates)
        slower = rates[0] / rates[1]
        inputs = [r["rows"] for r in slow["ranks"]]
        print(
            f"  {k:>4g}x asked, {slower:5.2f}x measured (sleep {delay:.3f}s a batch): "
            f"{slow['seconds']:6.1f}s vs ideal {ideal:6.1f}s = {slow['seconds'] / ideal:.2f}x "
            f"the ideal; inputs per rank {inputs}"
        )
        if abs(slower - k) <= 0.1 * k:
            return
        delay *= (k - 1) / max(0.1, slower - 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--share", type=float, default=0.4)
    parser.add_argument("--slow", type=float, nargs="*", default=[3, 5, 10])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        corpus = write_corpus(tmp / "corpus.jsonl", args.rows)
        print(f"{args.rows} texts, all-MiniLM-L6-v2 fp32, 2 processes, defaults")
        stopped = stop_at(tmp, corpus, args.rows, args.share)
        left = 1 - stopped["computed"] / args.rows
        rerun = stopped["rerun"] / args.rows
        print(
            f"SIGTERM at {stopped['signalled_at'] / args.rows:.0%} of the inputs (exit "
            f"{stopped['code']}); the stopped attempt computed {stopped['computed']} inputs; "
            f"the re-run computed {stopped['rerun']} = {rerun:.1%} of the inputs, against "
            f"{left:.1%} not done at the stop: {rerun - left:.1%} of the work lost"
        )
        balanced = ddpinfer(tmp, corpus, 2, "balanced")
        print(f"balanced run: {balanced['seconds']:.1f}s; one slow rank:")
        for k in args.slow:
            slow_rank(tmp, corpus, k, balanced)


if __name__ == "__main__":
    main()
