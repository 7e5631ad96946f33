"""Packed against padded batches, forward pass by forward pass, in one process.

End-to-end runs on a shared 2-core VM vary by ±8 % between repetitions, more than packing
changes. This takes one window of the seeded long-tailed corpus, plans it both ways
(``batch.packing=true`` and ``false``, the default model and budget) and runs the two plans'
batches alternately, one packed, one padded, so that any drift in the machine's speed falls on
both alike. Prints real tokens/s of each and their ratio after each repetition.

On CUDA in half precision (``--device cuda --dtype float16``) packed batches take PyTorch's
FlashAttention variable-length kernel, one call per layer, which is what this measures there.

    python benchmarks/bench_packing.py [--rows 1024] [--reps 3] [--threads 1]
        [--device cpu|cuda] [--dtype auto|float32|float16|bfloat16] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import zip_longest
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import make_texts  # noqa: E402

from ddpinfer.compute.batching import BatchLimits  # noqa: E402
from ddpinfer.compute.tasks import build_task  # noqa: E402
from ddpinfer.compute.tasks.base import to_device  # noqa: E402
from ddpinfer.compute.windows import prepare_window  # noqa: E402
from ddpinfer.config import BatchConfig, Config, EmbedTaskConfig, ModelConfig  # noqa: E402
from ddpinfer.inputs.readers import Row  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [Row(i, i, text) for i, text in enumerate(make_texts(args.rows, seed=2))]
    limits = BatchLimits(256, args.max_tokens)
    device = torch.device(args.device)
    plans = {}
    for name, setting in (("packed", "true"), ("padded", "false")):
        cfg = Config(
            task=EmbedTaskConfig(),
            model=ModelConfig(dtype=args.dtype),
            batch=BatchConfig(packing=setting),
        )
        task = build_task(cfg, device)
        plans[name] = (task, prepare_window(task, [0], [rows], limits))
    real = sum(len(item) for item in plans["padded"][1].items if item is not None)
    for name, (_, window) in plans.items():
        computed = sum(b["input_ids"].numel() for b in window.collated)
        print(f"{name}: {len(window.collated)} batches, padding efficiency {real / computed:.3f}")
    print(
        f"{args.rows} texts, {real} real tokens, {args.device}, dtype {args.dtype}, "
        f"{args.threads} thread(s); real tokens/s"
    )
    seconds = {name: 0.0 for name in plans}
    with torch.inference_mode():
        for rep in range(1, args.reps + 1):
            pairs = zip_longest(*(window.collated for _, window in plans.values()))
            for batches in pairs:
                for name, batch in zip(plans, batches):
                    if batch is not None:
                        began = time.perf_counter()
                        plans[name][0](to_device(batch, device), [])  # returns on the host
                        seconds[name] += time.perf_counter() - began
            rate = {name: real * rep / s for name, s in seconds.items()}
            print(
                f"after {rep} rep(s): packed {rate['packed']:.0f}, padded {rate['padded']:.0f}: "
                f"packed/padded {rate['packed'] / rate['padded']:.3f}x"
            )


if __name__ == "__main__":
    main()
