"""Tasks: a model in, one record per input out. One module per task; this registry names them."""

from __future__ import annotations

import importlib

import torch

from ddpinfer import images, model_loading
from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import FieldCheck
from ddpinfer.tasks.base import Task

TASK_MODULES = {
    "embed": "ddpinfer.tasks.embed",
    "classify": "ddpinfer.tasks.classify",
    "generate": "ddpinfer.tasks.generate",
    "image_text": "ddpinfer.tasks.image_text",
    "custom": "ddpinfer.tasks.custom",
}


def input_fields(cfg: Config) -> tuple[tuple[str, FieldCheck | None], ...]:
    """Record fields the task reads besides the text, each with the check run as it is read."""
    if cfg.task.name == "image_text":
        return ((cfg.data.image_field, images.check_paths),)
    return ()


OUTPUT_COLUMNS = {
    "embed": ("embedding",),
    "classify": ("label", "score", "top_k"),
    "generate": ("generated_text",),
    "image_text": ("generated_text",),
}
"""The columns each built-in task writes beside the id (a custom task's are known once it ran)."""


def check_keep_fields(cfg: Config) -> None:
    """output.keep_fields must not name a column the task writes itself."""
    taken = OUTPUT_COLUMNS.get(cfg.task.name, ())
    clash = [name for name in cfg.output.keep_fields or () if name in taken]
    if clash:
        raise UserError(
            f"output.keep_fields names {clash[0]!r}, a column task={cfg.task.name} writes "
            f"itself ({', '.join(taken)}). HINT: keep other fields, or rename that input field."
        )


def model_path(cfg: Config) -> str:
    """model.path, or the task's bundled default (embed: all-MiniLM-L6-v2)."""
    if cfg.model.path:
        return cfg.model.path
    if cfg.task.name == "custom":  # the class loads what it needs itself
        return f"custom:{cfg.task.target}"
    if cfg.task.name == "embed":
        return model_loading.bundled_model_path()
    raise UserError(f"model.path is required for task={cfg.task.name} (no bundled default)")


def build_task(cfg: Config, device: torch.device) -> Task:
    """Load the model and tokenizer for ``cfg.task`` onto ``device``."""
    module = importlib.import_module(TASK_MODULES[cfg.task.name])
    return module.build(cfg, model_path(cfg), device)
