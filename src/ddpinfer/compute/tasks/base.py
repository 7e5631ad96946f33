"""What every task shares: inputs prepared once, padded per batch, run on one device.

A task works in three steps so that only the last one sits on the compute path:

- ``prepare(rows)``: per-input work done once, on a background thread (tokenizing, decoding
  images). One item per row; an input that cannot be prepared gets an ``Exception`` in its slot
  and is recorded as that row's error. ``cost(item)`` is what the item weighs in a batch's token
  budget (a batch costs rows × its largest cost).
- ``collate(items)``: one batch of prepared items as padded CPU tensors (background thread too).
- ``__call__(batch, rows)``: the forward pass on ``self.device``; returns *columns*: a mapping
  from field name to one value per row (a 2-D float32 array for embeddings, a list or 1-D
  array otherwise). A task may return a list of per-row dicts instead; it is turned into columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ddpinfer.compute import model_loading
from ddpinfer.inputs import Row

Columns = Mapping[str, "np.ndarray | list[Any]"]


class Task:
    """A text task: a tokenizer and a model on one device. Subclasses implement ``__call__``."""

    padding_side = "right"
    packed = False
    """True: ``collate`` packs a batch's inputs into one row (``ddpinfer.packing``), so a batch
    costs the sum of its inputs' costs, not rows × the largest."""
    window_rows: int | None = None
    """At most this many inputs prepared together (less than batch.sort_rows when prepared
    items are large, like decoded images). None: batch.sort_rows."""

    def __init__(self, tokenizer: Any, model: torch.nn.Module, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length
        self.device = model_loading.input_device(model)

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        """Token ids of each row's text, truncated; tokenized once, in one call when possible."""
        return prepare_each(self._tokenize, [row.text for row in rows])

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def cost(self, item: Any) -> int:
        """Tokens this input occupies in a batch (its padded width)."""
        return len(item)

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        return pad_token_ids(items, self.tokenizer.pad_token_id or 0, self.padding_side)

    def __call__(self, batch: Mapping[str, torch.Tensor], rows: Sequence[int]) -> Columns:
        raise NotImplementedError


def tokenize(tokenizer: Any, texts: list[str], max_length: int | None) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (None: not truncated)."""
    return tokenizer(
        texts,
        truncation=max_length is not None,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]


def prepare_each(prepare: Any, items: Sequence[Any]) -> list[Any]:
    """``prepare(items)`` in one call; if it raises, item by item, with the exception in the
    slot of each item that raises (one bad text must not fail the others)."""
    try:
        return prepare(items)
    except Exception:
        prepared: list[Any] = []
        for item in items:
            try:
                prepared.extend(prepare([item]))
            except Exception as e:
                prepared.append(RuntimeError(f"tokenizer failed: {type(e).__name__}: {e}"))
        return prepared


def pad_token_ids(
    ids: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` padded to the longest row only."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        n = len(row)
        at = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[i, at] = torch.as_tensor(row, dtype=torch.long)
        mask[i, at] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a collated batch's tensors to ``device`` (pinned host memory makes the copy
    asynchronous); anything else, like a custom task's texts, is passed as it is."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def rows_to_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per-row dicts (a custom task's output) as columns; every dict must have the same keys."""
    keys = list(records[0]) if records else []
    return {k: [r[k] for r in records] for k in keys}
