"""How much length-sorted batching saves over batching in input order.

Inputs of very different lengths padded together waste compute on padding; ddpinfer sorts each
work unit by token length before batching. This runs the same inputs through the same model both
ways, in one process, and prints the speed ratio (and checks the records are the same).

    python benchmarks/bench_length_sorting.py [--rows 2048] [--batch-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny_models  # noqa: E402

from ddpinfer import inference  # noqa: E402
from ddpinfer.config import Config, EmbedTaskConfig, FaultConfig, ModelConfig  # noqa: E402
from ddpinfer.inputs import Row  # noqa: E402
from ddpinfer.tasks import build_task  # noqa: E402


def make_rows(n: int) -> list[Row]:
    rng = random.Random(0)
    words = " ".join(tiny_models.CORPUS).split()
    return [
        Row(i, i, " ".join(rng.choices(words, k=rng.choice([4, 8, 16, 120])))) for i in range(n)
    ]


def timed(runner: inference.UnitRunner, rows: list[Row], repeats: int) -> tuple[float, list]:
    runner.run(rows[:64])  # warm-up
    best, records = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        records = runner.run(rows)
        best = min(best, time.perf_counter() - start)
    return best, records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_models.save_bert_embedder(Path(tmp) / "bert")
        cfg = Config(task=EmbedTaskConfig(), model=ModelConfig(path=str(path), max_length=128))
        task = build_task(cfg, torch.device(args.device))
        runner = inference.UnitRunner(task, args.batch_size, lambda: None, FaultConfig())
        rows = make_rows(args.rows)
        sorted_s, sorted_records = timed(runner, rows, args.repeats)
        original = inference.longest_first
        inference.longest_first = lambda lengths: list(range(len(lengths)))  # input order
        try:
            plain_s, plain_records = timed(runner, rows, args.repeats)
        finally:
            inference.longest_first = original
    np.testing.assert_allclose(
        [r["embedding"] for r in sorted_records], [r["embedding"] for r in plain_records], atol=1e-4
    )
    print(f"device={args.device} rows={args.rows} batch_size={args.batch_size}")
    print(f"input order:   {plain_s:.3f}s ({args.rows / plain_s:.0f} inputs/s)")
    print(f"length-sorted: {sorted_s:.3f}s ({args.rows / sorted_s:.0f} inputs/s)")
    print(f"speed-up (input order / length-sorted): {plain_s / sorted_s:.2f}x")


if __name__ == "__main__":
    main()
