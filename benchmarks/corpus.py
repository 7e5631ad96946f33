"""A seeded, long-tailed corpus of English-like texts: 3-300 words, median about 30.

python benchmarks/corpus.py out.jsonl [--rows 4096] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an "
    "they which one you were her all she there would their we him been has when who will more "
    "no if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long "
    "get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three model data inference "
    "distributed training cluster memory batch token language image network compute result "
    "river mountain history market policy science music city"
).split()


def make_texts(rows: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        words = min(300, max(3, round(math.exp(rng.gauss(math.log(30), 0.75)))))
        texts.append(" ".join(rng.choices(WORDS, k=words)).capitalize() + ".")
    return texts


def write_corpus(path: Path, rows: int, seed: int = 0) -> Path:
    with open(path, "w") as f:
        for i, text in enumerate(make_texts(rows, seed)):
            f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_corpus(args.path, args.rows, args.seed)
