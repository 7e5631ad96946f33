"""The baseline: the hand-written torchrun script ddpinfer replaces (about 40 lines).

Each rank takes its contiguous half of the corpus, tokenizes it, sorts by length, runs batches of
32 with dynamic padding, mean-pools, and `gather_object`s the embeddings to rank 0 in input
order. ``--forward-limit`` instead times forward calls alone on the same layout,
pre-tokenized, each batch cut to its shortest input: no padding at all (the ceiling).
``--write OUT`` makes rank 0 write ``{"id", "embedding"}`` JSONL in input order with the standard
``json`` module after the timed phase, as a user's script would: benchmarks time the whole command.

    torchrun --nproc_per_node=2 benchmarks/handwritten.py corpus.jsonl model_dir stats.json \
        [--forward-limit | --write OUT]
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from ddpinfer.torch_extensions import hide_unloadable

hide_unloadable()  # only where vLLM's CPU build left torchvision & co. built for another torch

from transformers import AutoModel, AutoTokenizer  # noqa: E402

corpus, model_dir, stats_path = sys.argv[1:4]
forward_limit = "--forward-limit" in sys.argv
write = sys.argv[sys.argv.index("--write") + 1] if "--write" in sys.argv else None
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
records = [json.loads(line) for line in open(corpus)]
texts = [r["text"] for r in records]
share = len(texts) // world + 1
start = rank * share
mine = texts[start : start + share]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
local_rank = int(os.environ.get("LOCAL_RANK", 0))
device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
model = AutoModel.from_pretrained(model_dir).eval().to(device)
dist.barrier()
began = time.time()
ids = tokenizer(mine, truncation=True, max_length=256)["input_ids"]
if forward_limit:
    began = time.time()  # pre-tokenized: time forward calls only
order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
out, real, padded = [None] * len(ids), 0, 0
with torch.inference_mode():
    for b in range(0, len(order), 32):
        batch = [ids[i] for i in order[b : b + 32]]
        if forward_limit:
            batch = [x[: min(map(len, batch))] for x in batch]
        enc = tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        for i, v in zip(order[b : b + 32], pooled.tolist()):
            out[i] = v
        real, padded = real + int(mask.sum()), padded + mask.numel()
if device.type == "cuda":
    torch.cuda.synchronize()
gathered = [None] * world if rank == 0 else None
dist.gather_object(out, gathered, dst=0)
finished = time.time()
stats = [None] * world
dist.all_gather_object(
    stats,
    {"started_at": began, "finished_at": finished, "real_tokens": real, "padded_tokens": padded},
)
if rank == 0:
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    if write:
        rows = [v for part in gathered for v in part]
        with open(write, "w") as f:
            for record, v in zip(records, rows):
                f.write(json.dumps({"id": record["id"], "embedding": v}) + "\n")
dist.destroy_process_group()
os._exit(0)  # gloo's destructors abort the process at exit about once in twenty runs
