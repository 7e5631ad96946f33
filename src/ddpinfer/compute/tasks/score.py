"""Cross-encoders and rerankers: each (text, pair) through AutoModelForSequenceClassification,
as ``CrossEncoder.predict`` scores it. Column: "score", float32 per row, or ``[rows, labels]``
for a model of several labels.

The pair is tokenized together (``[CLS] text [SEP] pair [SEP]`` with its token types for BERT),
truncated longest-first to the model's limit; the logits go through the activation the
checkpoint saved (sentence-transformers 5+: ``config_sentence_transformers.json``; 4:
``config.json``'s ``sentence_transformers.activation_fn``; older: its
``sbert_ce_default_activation_function``), else sigmoid for one label and none for several.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from ddpinfer.compute import model_loading
from ddpinfer.compute.tasks.base import Columns, Task, pad_token_ids, prepare_each
from ddpinfer.config import Config
from ddpinfer.inputs import Row
from ddpinfer.plan import st_checkpoint

log = logging.getLogger("ddpinfer")


class ScoreTask(Task):
    def __init__(self, tokenizer, model, max_length, pair_field: str, activation, prompt: str = ""):
        super().__init__(tokenizer, model, max_length)
        self.pair_field = pair_field
        self.activation = activation
        self.prompt = prompt
        self.num_labels = model.config.num_labels
        self.apply_softmax = False

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        pairs = [(self.prompt + row.text, (row.fields or {})[self.pair_field]) for row in rows]
        return prepare_each(self._tokenize_pairs, pairs)

    def _tokenize_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        encoded = self.tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            truncation="longest_first" if self.max_length else False,
            max_length=self.max_length,
            return_attention_mask=False,
        )
        types = encoded.get("token_type_ids") or [None] * len(pairs)
        return list(zip(encoded["input_ids"], types))

    def cost(self, item: Any) -> int:
        return len(item[0])

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        batch = pad_token_ids([ids for ids, _ in items], self.tokenizer.pad_token_id or 0)
        if items[0][1] is not None:
            batch["token_type_ids"] = pad_token_ids([t for _, t in items], 0)["input_ids"]
        return batch

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, torch.Tensor], rows: Sequence[int]) -> Columns:
        scores = self.model(**batch).logits
        if torch.finfo(scores.dtype).bits < 32:
            scores = scores.float()
        scores = self.activation(scores)
        if self.num_labels == 1:
            scores = scores.squeeze(-1)
        elif self.apply_softmax:
            scores = torch.nn.functional.softmax(scores, dim=1)
        return {"score": scores.float().cpu().numpy()}


def activation(saved: str | None, config: Any, trust_remote_code: bool) -> torch.nn.Module:
    """CrossEncoder's activation: the first saved one it may load (a torch class, or anything
    with model.trust_remote_code), else sigmoid for one label, identity for several."""
    legacy = getattr(config, "sentence_transformers", None) or {}
    for name in (
        saved,
        legacy.get("activation_fn"),
        getattr(config, "sbert_ce_default_activation_function", None),
    ):
        if not name:
            continue
        if trust_remote_code or name.startswith("torch."):
            module, _, cls_name = name.rpartition(".")
            return getattr(importlib.import_module(module), cls_name)()
        log.warning(
            "activation %s is not a torch class: not loaded (model.trust_remote_code)", name
        )
    return torch.nn.Sigmoid() if config.num_labels == 1 else torch.nn.Identity()


def build(cfg: Config, path: str, device: torch.device) -> ScoreTask:
    checkpoint = st_checkpoint.read_cross_encoder(path)
    folder = str(checkpoint.transformer_dir) if checkpoint else path
    tokenizer = model_loading.load_tokenizer(cfg.model, folder)
    model = model_loading.load_model(AutoModelForSequenceClassification, cfg.model, folder, device)
    positions = getattr(model.config, "max_position_embeddings", -1)
    limit = tokenizer.model_max_length
    limit = min(limit, positions) if positions and positions > 0 else limit
    prompt, source = st_checkpoint.resolve_prompt(checkpoint, cfg.task.prompt, cfg.task.prompt_name)
    if prompt:
        log.info("each pair's first text starts with the prompt %r (%s)", prompt, source)
    saved = checkpoint.activation_fn if checkpoint else None
    task = ScoreTask(
        tokenizer,
        model,
        model_loading.max_length(cfg.model, tokenizer, limit),
        cfg.data.pair_field,
        activation(saved, model.config, cfg.model.trust_remote_code),
        prompt or "",
    )
    task.apply_softmax = cfg.task.apply_softmax
    return task
