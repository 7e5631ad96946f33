"""What a sentence-transformers checkpoint runs after pooling: its Dense layers (each a linear
map, its activation and an optional residual) and Normalize, in ``modules.json`` order, as
sentence-transformers' ``Dense`` and ``Normalize`` modules compute them."""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path

import torch
from torch import nn

from ddpinfer.errors import UserError
from ddpinfer.plan.st_checkpoint import NORMALIZE, DenseLayer

log = logging.getLogger("ddpinfer")


class Dense(nn.Module):
    """sentence-transformers' Dense: ``activation(linear(x))`` (+ the residual)."""

    def __init__(self, layer: DenseLayer, trust_remote_code: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
        self.activation = activation(layer, trust_remote_code)
        self.use_residual = layer.use_residual
        if layer.use_residual and layer.in_features != layer.out_features:
            self.residual = nn.Linear(layer.in_features, layer.out_features, bias=False)
        self.load_state_dict(_weights(layer.folder))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2, dim=-1)


def build_head(
    head: tuple[DenseLayer | str, ...],
    trust_remote_code: bool,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential | None:
    """The modules after pooling on ``device`` in ``dtype`` (the transformer's, as
    sentence-transformers casts the whole model), or None when there are none."""
    if not head:
        return None
    modules = [Normalize() if m == NORMALIZE else Dense(m, trust_remote_code) for m in head]
    return nn.Sequential(*modules).to(device=device, dtype=dtype).eval()


def activation(layer: DenseLayer, trust_remote_code: bool) -> nn.Module:
    """The saved activation, loaded as sentence-transformers' Dense.load does: a torch class
    (anything else only with model.trust_remote_code), else its default, Tanh."""
    name = layer.activation
    if name is None:
        return nn.Tanh()
    if not (trust_remote_code or name.startswith("torch.")):
        log.warning(
            "%s: activation %s is not a torch class; like sentence-transformers, Tanh is used "
            "(model.trust_remote_code=true loads it)",
            layer.folder,
            name,
        )
        return nn.Tanh()
    module, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{layer.folder / 'config.json'}: activation {name!r}: {e}") from e
    if not trust_remote_code and not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UserError(
            f"{layer.folder / 'config.json'}: activation {name!r} is not a torch.nn.Module class"
        )
    return cls()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(
        f"{folder}: a Dense module without weights (model.safetensors or pytorch_model.bin). "
        "HINT: check the checkpoint's files."
    )
