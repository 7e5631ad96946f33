"""Batched greedy generation (ddpinfer's generate task) against a batch-1 ``generate`` loop.

One process, a tiny random GPT-2 built like the tests' (saved with ``save_pretrained`` and loaded
back through ddpinfer's own path), prompts from the benchmark corpus. Prints new tokens/s of
both, the ratio, and checks that every generated text is identical.

    python benchmarks/bench_generate.py [--prompts 256] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from ddpinfer.torch_extensions import hide_unloadable  # noqa: E402

hide_unloadable()  # before transformers (see ddpinfer.torch_extensions)

import tiny_models  # noqa: E402
from corpus import make_texts  # noqa: E402

from ddpinfer.compute.batching import BatchLimits  # noqa: E402
from ddpinfer.compute.tasks import build_task  # noqa: E402
from ddpinfer.compute.windows import WindowRunner, prepare_window  # noqa: E402
from ddpinfer.config import Config, FaultConfig, GenerateTaskConfig, ModelConfig  # noqa: E402
from ddpinfer.inputs.readers import Row  # noqa: E402


def batched(task, prompts: list[str], limits: BatchLimits) -> list[str]:
    rows = [Row(i, i, p) for i, p in enumerate(prompts)]
    results = {}
    runner = WindowRunner(task, limits, lambda: None, FaultConfig())
    window = prepare_window(task, [0], [rows], limits)
    runner.run(window, lambda r: results.update(zip(r.good, r.columns["generated_text"])))
    return [results[i] for i in range(len(prompts))]


def one_at_a_time(task, prompts: list[str], new_tokens: int) -> tuple[list[str], int]:
    texts, count = [], 0
    with torch.inference_mode():
        for prompt in prompts:
            enc = task.tokenizer(
                prompt, truncation=True, max_length=task.max_length, return_tensors="pt"
            )
            out = task.model.generate(**enc, generation_config=task.generation_config)
            new = out[0, enc["input_ids"].shape[1] :]
            count += len(new)
            texts.append(task.tokenizer.decode(new, skip_special_tokens=True))
    return texts, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [" ".join(t.split()[:12]) for t in make_texts(args.prompts, seed=1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_models.save_gpt2_generator(Path(tmp) / "gpt2")
        cfg = Config(
            task=GenerateTaskConfig(max_new_tokens=args.new_tokens),
            model=ModelConfig(path=str(path), max_length=64),
        )
        task = build_task(cfg, torch.device("cpu"))
        limits = BatchLimits(max_rows=256, max_tokens=1024 * 16)
        batched(task, prompts[:8], limits)  # warm-up
        began = time.perf_counter()
        ours = batched(task, prompts, limits)
        ours_s = time.perf_counter() - began
        began = time.perf_counter()
        reference, new_tokens = one_at_a_time(task, prompts, args.new_tokens)
        loop_s = time.perf_counter() - began
    same = sum(a == b for a, b in zip(ours, reference))
    print(f"{args.prompts} prompts, {args.new_tokens} new tokens each, tiny GPT-2, CPU, 1 thread")
    print(
        f"batch-1 loop: {new_tokens / loop_s:,.0f} new tokens/s; ddpinfer batched: "
        f"{new_tokens / ours_s:,.0f} new tokens/s; ratio {loop_s / ours_s:.1f}x; "
        f"identical texts: {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
