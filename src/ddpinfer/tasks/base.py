"""What every task shares: a tokenizer, a model on one device, and length-aware encoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddpinfer import model_loading


class Task:
    """Subclasses implement ``__call__``: texts (and their row numbers) in, records out."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.device = model_loading.input_device(model)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation; used to batch similar lengths together."""
        ids = self.tokenizer(
            list(texts), truncation=self.max_length is not None, max_length=self.max_length
        )["input_ids"]
        return [len(x) for x in ids]

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest text in this batch only, and put the tensors where the model's
        input embeddings live (never a hard-coded cuda:0)."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def __call__(self, texts: Sequence[str], rows: Sequence[int]) -> list[dict[str, Any]]:
        raise NotImplementedError
