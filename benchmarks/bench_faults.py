"""The long fault campaign: for each fault kind, trials with a fault at a random moment (an
event: the run directory holding a random number of journals and parts), then re-runs until
exit 0. Printed: fault kind x trials x exact outputs x hangs x wrong exit codes, and the share
of inputs recomputed beyond what no attempt had finished. The tiny BERT of the tests, 2 ranks
for kill-rank, one process otherwise.

    python benchmarks/bench_faults.py [--trials 5] [--rows 32] [--kinds sigterm damage]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

from ddpinfer.torch_extensions import hide_unloadable  # noqa: E402

hide_unloadable()

import tiny_models  # noqa: E402
from fault_campaign import KINDS, prepare, run_trial  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_models.save_bert_embedder(root / "model")
        print("| fault | trials | exact | hangs | wrong exit codes | recomputed (max) |")
        print("|---|---|---|---|---|---|")
        for kind in opts.kinds:
            trials = []
            for seed in range(opts.trials):
                folder = root / f"{kind}-{seed}"
                reference = prepare(folder, model, opts.rows)
                trials.append(run_trial(folder, model, kind, seed, reference))
            exact = sum(t.exact for t in trials)
            hangs = sum(t.hang for t in trials)
            wrong = sum(t.wrong_exit for t in trials)
            worst = max(t.recomputed for t in trials)
            print(f"| {kind} | {len(trials)} | {exact} | {hangs} | {wrong} | {worst:.1%} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
