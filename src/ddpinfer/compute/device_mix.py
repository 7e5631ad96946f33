"""When a model spread over several GPUs still mixes devices in a forward pass: say where each
module sits and which ``model.colocate`` keeps the modules feeding the input embeddings together.

Native transformers VLMs move image features to the embeddings' device themselves; remote code
(MiniCPM-V 2.x, InternVL) often does not, and fails with torch's "Expected all tensors to be on
the same device". That is a placement problem, not a bad input: the run stops with the fix.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from ddpinfer.compute.device_map import describe
from ddpinfer.errors import UserError

DEVICE_MIX = "Expected all tensors to be on the same device"

OUTPUT_SIDE = r"(^|\.)(lm_head|(final_)?(layer)?norm)$"
"""Modules after the layer stack (output head, final norm): they may sit on any GPU."""


def is_device_mix(error: BaseException, model: torch.nn.Module) -> bool:
    """Did a model spread over several GPUs fail because two of its tensors met on two?"""
    spread = len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1
    return spread and DEVICE_MIX in str(error)


def explain_device_mix(model: torch.nn.Module, error: BaseException) -> str:
    """The error, the replica's device map, and the model.colocate setting that keeps every
    module that is not a layer of the main stack (vision tower, projector, ...) on the first
    GPU."""
    device_map = getattr(model, "hf_device_map", None) or {}
    suggestion = suggest_colocate(device_map, _output_head_name(model))
    return (
        f"{error}\nThe model's modules are spread over the replica's GPUs like this:\n"
        f"{describe(device_map)}\nHINT: keep the modules that feed the input embeddings on the "
        f"first GPU: model.colocate=[{','.join(suggestion)}]"
    )


def suggest_colocate(device_map: Mapping[str, Any], output_head: str | None) -> list[str]:
    """Every placed module except the layers of the largest numbered stack (the language
    model's), the output head and final norms, which may sit on any GPU."""
    stacks: dict[str, int] = defaultdict(int)
    for key in device_map:
        head, _, last = key.rpartition(".")
        if last.isdigit():
            stacks[head] += 1
    main = max(stacks, key=stacks.get) if stacks else None
    out: list[str] = []
    for key in device_map:
        head, _, last = key.rpartition(".")
        if head == main or key == output_head or re.search(OUTPUT_SIDE, key):
            continue
        name = head if last.isdigit() else key
        if name and name not in out:
            out.append(name)
    return out


class DeviceMixError(UserError):
    """A forward pass met tensors on two GPUs of the replica: the device map needs changing."""


def _output_head_name(model: torch.nn.Module) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is head), None)
