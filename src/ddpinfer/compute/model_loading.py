"""Load tokenizers and models through transformers' own ``from_pretrained``, onto one device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddpinfer.compute import device_map
from ddpinfer.config import ModelConfig
from ddpinfer.errors import UserError
from ddpinfer.launch import replica_gpus

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """The model or tokenizer at model.path cannot be loaded."""


def torch_dtype(name: str, device: torch.device) -> Any:
    if name == "auto":
        # CPU kernels for half precision are slow or missing; on CUDA keep the checkpoint's dtype.
        return torch.float32 if device.type == "cpu" else "auto"
    return DTYPES[name]


def local_only(path: str) -> dict[str, Any]:
    """``local_files_only=True`` for a folder on disk: loading it never asks the hub anything."""
    return {"local_files_only": True} if Path(path).expanduser().is_dir() else {}


def load_tokenizer(cfg: ModelConfig, path: str, **kwargs: Any):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **local_only(path), **kwargs
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.path={path}: cannot load the tokenizer: {e}{_hint(e)}") from e


def load_processor(cfg: ModelConfig, path: str):
    """The model's AutoProcessor (image processor + tokenizer + chat template), left padding."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **local_only(path)
        )
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(f"model.path={path}: cannot load the processor: {e}{_hint(e)}") from e
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise ModelLoadError(
            f"model.path={path}: {type(processor).__name__} is not an image+text processor. "
            "HINT: task=image_text needs a model folder with a processor for images and text."
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_model(auto_class: Any, cfg: ModelConfig, path: str, device: torch.device):
    """The whole model on ``device`` (never device_map="auto": one model, one GPU, per process),
    or with model.gpus_per_replica=k, spread over the k GPUs starting at ``device``."""
    kwargs: dict[str, Any] = local_only(path)
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.attn_implementation
    dtype = torch_dtype(cfg.dtype, device)
    try:
        if cfg.gpus_per_replica > 1 and device.type == "cuda":
            gpus = replica_gpus(device, cfg.gpus_per_replica)
            kwargs["device_map"] = device_map.plan_replica(auto_class, cfg, path, gpus, dtype)
        model = auto_class.from_pretrained(
            path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except (OSError, ValueError, ImportError) as e:
        if isinstance(e, UserError):
            raise
        raise ModelLoadError(
            f"model.path={path}: cannot load it as {auto_class.__name__}: {e}{_hint(e)}"
        ) from e
    if "device_map" not in kwargs:
        model = model.to(device)
    model = model.eval()
    if cfg.compile:
        # Only the forward is compiled; the module keeps its attributes (config, generate, ...).
        model.forward = torch.compile(model.forward, dynamic=True)
    return model


def _hint(error: Exception) -> str:
    if "flash_attn" in str(error) or "flash_attention" in str(error):
        return (
            " HINT: flash_attention_2 needs `pip install flash-attn` and a CUDA device; "
            "model.attn_implementation=sdpa works everywhere."
        )
    if "trust_remote_code" in str(error):
        return (
            " HINT: this model ships its own code; if you trust it, add "
            "model.trust_remote_code=true."
        )
    return ""


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input tensors must go: the device of the model's input embeddings."""
    return model.get_input_embeddings().weight.device


def max_length(cfg: ModelConfig, tokenizer: Any, default: int | None = None) -> int | None:
    """model.max_length, else ``default``, else the tokenizer's limit when it is a real one."""
    if cfg.max_length:
        return cfg.max_length
    if default:
        return default
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None
