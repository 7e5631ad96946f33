"""Sentence embeddings: AutoModel, pooled over tokens. Column: "embedding", float32 [rows, dim]."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from ddpinfer.compute import model_loading, packing
from ddpinfer.compute.tasks.base import Columns, Task
from ddpinfer.config import Config, EmbedTaskConfig


class EmbedTask(Task):
    def __init__(
        self, tokenizer, model, max_length, cfg: EmbedTaskConfig, packed: bool = False
    ) -> None:
        super().__init__(tokenizer, model, max_length)
        self.cfg = cfg
        self.packed = packed
        if packed:
            self._first_position = packing.position_start(model.config) or 0
            packing.use(model)

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        if self.packed:
            return packing.pack(items, self._first_position)
        return super().collate(items)

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, Any], rows: Sequence[int]) -> Columns:
        if self.packed:
            lengths = batch[packing.LENGTHS]
            model_inputs = {k: v for k, v in batch.items() if k != packing.LENGTHS}
            hidden = self.model(**model_inputs).last_hidden_state[0]
            pooled = packing.pool(hidden, lengths, self.cfg.pooling)
        else:
            hidden = self.model(**batch).last_hidden_state
            pooled = pool(hidden, batch["attention_mask"], self.cfg.pooling)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return {"embedding": pooled.float().cpu().numpy()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def sentence_transformers_max_length(path: str) -> int | None:
    """sentence-transformers checkpoints carry their own sequence limit (all-MiniLM-L6-v2: 256,
    below its tokenizer's 512); honour it so embeddings match ``SentenceTransformer.encode``."""
    config = Path(path) / "sentence_bert_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("max_seq_length")
    return None


def build(cfg: Config, path: str, device: torch.device) -> EmbedTask:
    tokenizer = model_loading.load_tokenizer(cfg.model, path)
    model = model_loading.load_model(AutoModel, cfg.model, path, device)
    limit = model_loading.max_length(cfg.model, tokenizer, sentence_transformers_max_length(path))
    packed = packing.choose(cfg.batch.packing, model, device, cfg.model.attn_implementation)
    return EmbedTask(tokenizer, model, limit, cfg.task, packed)
