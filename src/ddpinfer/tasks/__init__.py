"""Tasks: a model in, one record per input out. One module per task; this registry names them."""

from __future__ import annotations

import importlib

import torch

from ddpinfer.config import Config
from ddpinfer.tasks.base import Task

TASK_MODULES = {
    "embed": "ddpinfer.tasks.embed",
    "classify": "ddpinfer.tasks.classify",
    "generate": "ddpinfer.tasks.generate",
}


def build_task(cfg: Config, device: torch.device) -> Task:
    """Load the model and tokenizer for ``cfg.task`` onto ``device``."""
    module = importlib.import_module(TASK_MODULES[cfg.task.name])
    return module.build(cfg, device)
