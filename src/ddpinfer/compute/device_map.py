"""One model replica over its k GPUs: a device map planned on a meta copy of the model.

Nothing is loaded to plan: the model is built from its config on the meta device and accelerate's
``infer_auto_device_map`` places it over the replica's GPUs only (never ``device_map="auto"``,
which takes every GPU in sight), keeping the model's ``_no_split_modules`` whole. The modules
that must sit with the input embeddings (``model.colocate``; presets per model type) are taken
out first: the replica's first GPU gives up their size, the rest is planned around them, then
they are put on that GPU. The result is checked (every weight placed once, every key a real
name, only the replica's GPUs) before ``from_pretrained`` sees it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ddpinfer.config import ModelConfig
from ddpinfer.errors import UserError

log = logging.getLogger("ddpinfer")

PRESETS: dict[str, list[str]] = {
    "llava": ["model.vision_tower", "model.multi_modal_projector"],
    "llava_next": ["model.vision_tower", "model.multi_modal_projector"],
    "llava_onevision": ["model.vision_tower", "model.multi_modal_projector"],
    "qwen2_vl": ["model.visual"],
    "qwen2_5_vl": ["model.visual"],
    "idefics3": ["model.vision_model", "model.connector"],
    "smolvlm": ["model.vision_model", "model.connector"],
    "minicpmv4_6": ["model.vision_tower", "model.merger"],
    "minicpmv": ["vpm", "resampler"],  # MiniCPM-V 2.x, remote code
}
"""Modules that feed the input embeddings, by ``config.model_type``. The input embeddings
themselves are always placed on the first GPU."""

DEFAULT_MEMORY_FRACTION = 0.8
"""Of each GPU's free memory, the share weights may take; the rest is for activations and the
KV cache."""

DeviceMap = dict[str, Any]


class DeviceMapError(UserError):
    """The model cannot be placed over the replica's GPUs as asked."""


def meta_model(auto_class: Any, config: Any, dtype: torch.dtype, trust_remote_code: bool):
    """The model's skeleton on the meta device: names, shapes and sizes, no memory."""
    with torch.device("meta"):
        return auto_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)


def colocated(model: torch.nn.Module, colocate: list[str] | None) -> list[str]:
    """The input embeddings' module, the modules named by ``colocate`` (unset: the preset for
    the model's type), and any module sharing a weight with one of them (tied weights)."""
    modules = dict(model.named_modules())
    embeddings = model.get_input_embeddings()
    names = [n for n, m in modules.items() if m is embeddings][:1]
    if colocate is None:
        preset = PRESETS.get(getattr(model.config, "model_type", ""), [])
        names += [n for n in preset if n in modules]
    else:
        unknown = [n for n in colocate if n not in modules]
        if unknown:
            top = [n for n in modules if n and n.count(".") <= 1]
            raise DeviceMapError(
                f"model.colocate names {unknown[0]!r}, which is not a module of "
                f"{type(model).__name__}. HINT: use module names such as {', '.join(top[:8])}."
            )
        names += list(colocate)
    return _outermost(names + _tied_partners(model, names))


def _tied_partners(model: torch.nn.Module, names: list[str]) -> list[str]:
    owners: dict[int, set[str]] = defaultdict(set)
    for name, param in model.named_parameters(remove_duplicate=False):
        owners[id(param)].add(name.rpartition(".")[0])
    partners = []
    for modules in owners.values():
        if len(modules) > 1 and any(_covers(n, m) for n in names for m in modules):
            partners += [m for m in modules if not any(_covers(n, m) for n in names)]
    return partners


def plan_replica(
    auto_class: Any, cfg: ModelConfig, path: str, gpus: list[int], dtype: Any
) -> DeviceMap:
    """Plan, check and log the device map for ``path`` over ``gpus`` (model.* settings)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    dtype = dtype if isinstance(dtype, torch.dtype) else config_dtype(config)
    model = meta_model(auto_class, config, dtype, cfg.trust_remote_code)
    names = colocated(model, cfg.colocate)
    device_map = plan(model, gpus, gpu_budgets(gpus, cfg.max_memory), names, dtype)
    log.info(
        "model over GPUs %s (with the input embeddings on GPU %d: %s):\n%s",
        gpus,
        gpus[0],
        ", ".join(names),
        describe(device_map),
    )
    return device_map


def config_dtype(config: Any) -> torch.dtype:
    """The checkpoint's dtype from its config (the text model's for composite configs)."""
    for c in (config, getattr(config, "text_config", None)):
        value = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            value = getattr(torch, value)
        if isinstance(value, torch.dtype):
            return value
    return torch.float32


def gpu_budgets(gpus: list[int], max_memory: str | None) -> dict[int, int]:
    """Bytes of weights per GPU: model.max_memory, else a share of what is free now."""
    from accelerate.utils import convert_file_size_to_int

    if max_memory:
        try:
            size = int(max_memory) if max_memory.isdigit() else convert_file_size_to_int(max_memory)
        except ValueError:
            raise DeviceMapError(
                f"model.max_memory={max_memory!r} is not a size. HINT: write it like 30GiB."
            ) from None
        return dict.fromkeys(gpus, size)
    return {g: int(torch.cuda.mem_get_info(g)[0] * DEFAULT_MEMORY_FRACTION) for g in gpus}


def plan(
    model: torch.nn.Module,
    gpus: list[int],
    budgets: Mapping[int, int],
    colocate: list[str],
    dtype: torch.dtype,
) -> DeviceMap:
    """A device map over ``gpus`` (each with ``budgets[gpu]`` bytes for weights) with the
    ``colocate`` modules on ``gpus[0]``. ``model`` is a meta model; it is taken apart."""
    from accelerate.utils import compute_module_sizes, get_balanced_memory, infer_auto_device_map

    no_split = sorted(getattr(model, "_no_split_modules", None) or [])
    modules = dict(model.named_modules())
    tensors = _tensor_names(model)
    sizes = compute_module_sizes(model, dtype=dtype)
    together = sum(sizes[name] for name in colocate)
    first = gpus[0]
    if together > budgets[first]:
        raise DeviceMapError(
            f"the modules to keep with the input embeddings ({', '.join(colocate)}) need "
            f"{together / 2**30:.2f} GiB, more than GPU {first}'s budget of "
            f"{budgets[first] / 2**30:.2f} GiB. HINT: raise model.max_memory, or name fewer "
            "modules in model.colocate."
        )
    for name in colocate:  # planned around: they go to the first GPU whatever the rest does
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, torch.nn.Module())
    memory = {gpu: budgets[gpu] - (together if gpu == first else 0) for gpu in gpus}
    if len(gpus) > 1:
        memory = get_balanced_memory(model, memory, no_split_module_classes=no_split, dtype=dtype)
    device_map = infer_auto_device_map(
        model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype
    )
    for name in colocate:
        pin(device_map, modules, name, first)
    check(device_map, modules, tensors, gpus)
    return device_map


def pin(device_map: DeviceMap, modules: Mapping[str, torch.nn.Module], name: str, device) -> None:
    """Put module ``name`` on ``device``: a key covering it is split into its children (and
    direct weights), keys inside it are dropped."""
    while (outer := next((k for k in device_map if _is_ancestor(k, name)), None)) is not None:
        placed = device_map.pop(outer)
        prefix = f"{outer}." if outer else ""
        module = modules[outer]
        for child, _ in module.named_children():
            device_map[prefix + child] = placed
        for tensor, _ in [
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ]:
            device_map[prefix + tensor] = placed
    for key in [k for k in device_map if _is_ancestor(name, k)]:
        del device_map[key]
    device_map[name] = device


def check(
    device_map: DeviceMap,
    modules: Iterable[str],
    tensors: list[str],
    gpus: list[int],
) -> None:
    """Refuse a map that would not place every weight exactly once on the replica's GPUs."""
    known = set(modules) | set(tensors)
    for key, device in device_map.items():
        if key not in known:
            raise DeviceMapError(f"device map key {key!r} names no module or weight of the model")
        outer = next((k for k in _prefixes(key) if k in device_map and k != key), None)
        if outer is not None:
            raise DeviceMapError(f"device map keys {outer!r} and {key!r} overlap")
        if device not in gpus:
            raise DeviceMapError(
                f"the model does not fit on GPUs {gpus}: {key!r} was put on {device!r}. HINT: "
                "raise model.gpus_per_replica, use a smaller model.dtype (bfloat16), or raise "
                "model.max_memory."
            )
    missing = [t for t in tensors if not any(k in device_map for k in _prefixes(t))]
    if missing:
        raise DeviceMapError(
            f"the device map places no device for {len(missing)} weight(s), e.g. "
            f"{', '.join(missing[:3])}"
        )


def describe(device_map: Mapping[str, Any]) -> str:
    """One line per device, runs of numbered layers folded: ``cuda:1: model.layers.12-23``."""
    by_device: dict[str, list[str]] = defaultdict(list)
    for key, device in device_map.items():
        by_device[f"cuda:{device}" if isinstance(device, int) else str(device)].append(
            key or "<all>"
        )
    return "\n".join(f"  {d}: {', '.join(_fold(keys))}" for d, keys in by_device.items())


def _fold(keys: list[str]) -> list[str]:
    folded: list[str] = []
    runs: dict[str, list[int]] = {}
    for key in keys:
        head, _, last = key.rpartition(".")
        if last.isdigit() and head in runs and runs[head][-1] == int(last) - 1:
            runs[head].append(int(last))
            continue
        if last.isdigit():
            runs[head] = [int(last)]
        folded.append(key)
    out = []
    for key in folded:
        head, _, last = key.rpartition(".")
        run = runs.get(head) if last.isdigit() else None
        if run and run[0] == int(last) and len(run) > 1:
            key = f"{head}.{run[0]}-{run[-1]}"
        out.append(key)
    return out


def _outermost(names: list[str]) -> list[str]:
    """Each name once, without those inside another."""
    unique = list(dict.fromkeys(names))
    return [n for n in unique if not any(_is_ancestor(o, n) for o in unique)]


def _tensor_names(model: torch.nn.Module) -> list[str]:
    params = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return params + [n for n, _ in model.named_buffers(remove_duplicate=False)]


def _prefixes(name: str) -> list[str]:
    """``""``, then each dotted prefix of ``name``, then ``name`` itself."""
    parts = name.split(".")
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _is_ancestor(outer: str, inner: str) -> bool:
    return outer != inner and (outer == "" or inner.startswith(outer + "."))


def _covers(outer: str, inner: str) -> bool:
    return outer == inner or _is_ancestor(outer, inner)
