"""A complete task=custom example: word statistics per input, no model needed.

    torchrun --nproc_per_node=2 launch/infer.py task=custom \
        task.target=examples.word_count_task:WordCountTask +task.lowercase=true \
        data.path=texts.jsonl output.path=counts.jsonl

Record: {"id", "words", "unique", "longest"}. A real task loads its model in ``__init__`` (onto
``device``) and runs it in ``__call__``; ``cfg`` is the whole resolved config, so
``cfg.model.path`` and ``cfg.model.dtype`` are there to use.
"""

from __future__ import annotations

from typing import Any

import torch


class WordCountTask:
    def __init__(self, cfg: Any, device: torch.device) -> None:
        # Extra keys pass through: `+task.lowercase=true` arrives as cfg.task.lowercase.
        self.lowercase = bool(getattr(cfg.task, "lowercase", False))
        self.fail_on = getattr(cfg.task, "fail_on", None)  # to show how errors are recorded
        self.device = device

    def lengths(self, texts: list[str]) -> list[int]:
        """Optional: what each text weighs, so that batches group texts of similar length."""
        return [len(text.split()) for text in texts]

    def __call__(self, texts: list[str], rows: list[int]) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per text, in the same order, all with the same keys."""
        records = []
        for text in texts:
            if self.fail_on and self.fail_on in text:
                raise ValueError(f"refusing an input that contains {self.fail_on!r}")
            words = (text.lower() if self.lowercase else text).split()
            records.append(
                {
                    "words": len(words),
                    "unique": len(set(words)),
                    "longest": max(words, key=len, default=""),
                }
            )
        return records
