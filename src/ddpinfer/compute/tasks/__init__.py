"""Tasks: a model in, one record per input out. One module per task; this registry names them."""

from __future__ import annotations

import importlib

import torch

from ddpinfer.compute.tasks.base import Task
from ddpinfer.config import Config
from ddpinfer.plan import model_path

TASK_MODULES = {
    "embed": "ddpinfer.compute.tasks.embed",
    "classify": "ddpinfer.compute.tasks.classify",
    "generate": "ddpinfer.compute.tasks.generate",
    "image_text": "ddpinfer.compute.tasks.image_text",
    "custom": "ddpinfer.compute.tasks.custom",
}


def build_task(cfg: Config, device: torch.device) -> Task:
    """Load the model and tokenizer for ``cfg.task`` onto ``device``."""
    module = importlib.import_module(TASK_MODULES[cfg.task.name])
    return module.build(cfg, model_path(cfg), device)
