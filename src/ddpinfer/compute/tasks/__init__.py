"""Tasks: a model in, one record per input out. One module per task; this registry names them."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ddpinfer.config import Config
from ddpinfer.launch import LaunchEnv
from ddpinfer.plan import model_path

TASK_MODULES = {
    "embed": "ddpinfer.compute.tasks.embed",
    "classify": "ddpinfer.compute.tasks.classify",
    "generate": "ddpinfer.compute.tasks.generate",
    "image_text": "ddpinfer.compute.tasks.image_text",
    "custom": "ddpinfer.compute.tasks.custom",
    "score": "ddpinfer.compute.tasks.score",
}


def build_task(cfg: Config, device: torch.device, env: LaunchEnv | None = None) -> Any:
    """Load the model and tokenizer for ``cfg.task`` onto ``device``; with task.engine=vllm,
    the prompts' tokenizer (or processor) and this rank's engine (``stream_loop.EngineTask``)."""
    module = importlib.import_module(TASK_MODULES[cfg.task.name])
    if getattr(cfg.task, "engine", "hf") == "vllm":
        from ddpinfer.compute.engines.vllm_engine import VllmEngine
        from ddpinfer.compute.stream_loop import EngineTask

        path = model_path(cfg)
        prompts = module.build_prompts(cfg, path)
        engine = VllmEngine(
            path, cfg.model, cfg.task.vllm, env or LaunchEnv(launcher="single"), device,
            prompts.images_per_prompt,
        )  # fmt: skip
        return EngineTask(prompts, engine, device)
    return module.build(cfg, model_path(cfg), device)
