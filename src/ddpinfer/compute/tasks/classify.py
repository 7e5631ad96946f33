"""Sequence classification. Record: {"label", "score"} and, with task.top_k, {"top_k": [...]}."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from ddpinfer.compute import model_loading
from ddpinfer.compute.tasks.base import Columns, Task
from ddpinfer.config import ClassifyTaskConfig, Config

log = logging.getLogger("ddpinfer")


class ClassifyTask(Task):
    def __init__(self, tokenizer, model, max_length, cfg: ClassifyTaskConfig) -> None:
        super().__init__(tokenizer, model, max_length)
        self.cfg = cfg
        config = model.config
        self.labels = [config.id2label.get(i, str(i)) for i in range(config.num_labels)]
        # Multi-label heads score each label on its own; single-label heads share one softmax.
        self.multi_label = config.problem_type == "multi_label_classification"

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, torch.Tensor], rows: Sequence[int]) -> Columns:
        logits = self.model(**batch).logits.float()
        scores = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        k = min(self.cfg.top_k or 1, scores.shape[-1])
        top_scores, top_ids = (t.cpu().numpy() for t in scores.topk(k, dim=-1))
        columns: dict[str, Any] = {
            "label": [self.labels[i] for i in top_ids[:, 0]],
            "score": top_scores[:, 0],
        }
        if self.cfg.top_k:
            # scores stay float32, as "score" is: the same digits in every output format
            columns["top_k"] = [
                [{"label": self.labels[i], "score": s} for i, s in zip(ids, values)]
                for ids, values in zip(top_ids, top_scores)
            ]
        return columns


def build(cfg: Config, path: str, device: torch.device) -> ClassifyTask:
    tokenizer = model_loading.load_tokenizer(cfg.model, path)
    model = model_loading.load_model(AutoModelForSequenceClassification, cfg.model, path, device)
    if cfg.task.top_k and cfg.task.top_k > model.config.num_labels:
        log.warning(
            "task.top_k=%d, but model.path=%s has %d labels: top_k holds all %d",
            cfg.task.top_k,
            path,
            model.config.num_labels,
            model.config.num_labels,
        )
    return ClassifyTask(tokenizer, model, model_loading.max_length(cfg.model, tokenizer), cfg.task)
