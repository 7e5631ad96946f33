"""A sentence-transformers checkpoint's own description of itself, read before any model loads.

``modules.json`` lists the modules ``SentenceTransformer.encode`` runs in order: a Transformer,
a Pooling, then any Dense and Normalize layers. Their settings sit in each module's folder
(``sentence_bert_config.json``, ``1_Pooling/config.json``, ``2_Dense/config.json``); prompts and
a default truncation in ``config_sentence_transformers.json``. The keys are read as
sentence-transformers 6 reads them (legacy ``pooling_mode_*_tokens`` booleans included). A module
ddpinfer does not run stops the run in preflight, naming it: never a silent skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpinfer.errors import UserError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
"""sentence-transformers' legacy booleans, in the order their modes are concatenated."""
KNOWN = ("Transformer", "Pooling", "Dense", "Normalize")


@dataclass(frozen=True)
class DenseLayer:
    folder: Path
    in_features: int
    out_features: int
    bias: bool = True
    activation: str | None = "torch.nn.modules.activation.Tanh"
    """The activation's full class name; None: sentence-transformers' default, Tanh."""
    use_residual: bool = False


NORMALIZE = "normalize"
"""A Normalize module in ``Checkpoint.head``."""


@dataclass(frozen=True)
class Checkpoint:
    transformer_dir: Path
    max_seq_length: int | None
    do_lower_case: bool
    pooling: tuple[str, ...]
    include_prompt: bool
    head: tuple[DenseLayer | str, ...]
    """What runs after pooling, in order: Dense layers and ``NORMALIZE``."""
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None


def read(path: str) -> Checkpoint | None:
    """The checkpoint at ``path`` as sentence-transformers runs it; None when it is not a
    sentence-transformers folder (no ``modules.json``)."""
    root = Path(path).expanduser()
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None
    modules = sorted(_json(modules_file), key=lambda m: m.get("idx", 0))
    kinds = [_kind(m, modules_file) for m in modules]
    if not kinds or kinds[0] != "Transformer" or kinds.count("Transformer") != 1:
        raise UserError(
            f"{modules_file}: ddpinfer runs a Transformer module first, then Pooling, then Dense "
            f"or Normalize layers; this lists {', '.join(kinds) or 'nothing'}. HINT: run it with "
            "sentence-transformers itself."
        )
    if kinds.count("Pooling") != 1 or kinds.index("Pooling") != 1:
        raise UserError(
            f"{modules_file}: expected one Pooling module right after the Transformer; this lists "
            f"{', '.join(kinds)}. HINT: run it with sentence-transformers itself."
        )
    transformer_dir = root / modules[0].get("path", "")
    transformer = _json(transformer_dir / "sentence_bert_config.json", missing_ok=True)
    _check_text_transformer(transformer, transformer_dir, "feature-extraction")
    pooling_dir = root / modules[1]["path"]
    modes, include_prompt = _pooling(_json(pooling_dir / "config.json"), pooling_dir)
    head = tuple(
        _head_module(kind, root / m.get("path", "")) for kind, m in zip(kinds[2:], modules[2:])
    )
    settings = _json(root / "config_sentence_transformers.json", missing_ok=True)
    prompts, default = _prompts(root, settings)
    return Checkpoint(
        transformer_dir=transformer_dir,
        max_seq_length=_text_max_length(transformer) or transformer.get("max_seq_length"),
        do_lower_case=bool(transformer.get("do_lower_case", False)),
        pooling=modes,
        include_prompt=include_prompt,
        head=head,
        prompts=prompts,
        default_prompt_name=default,
        truncate_dim=settings.get("truncate_dim"),
    )


@dataclass(frozen=True)
class CrossEncoderCheckpoint:
    transformer_dir: Path
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    activation_fn: str | None = None
    """config_sentence_transformers.json's activation (sentence-transformers 5+), if any."""


def read_cross_encoder(path: str) -> CrossEncoderCheckpoint | None:
    """A CrossEncoder folder as sentence-transformers loads it: one Transformer module (a
    sequence classifier); None for a plain transformers checkpoint (no ``modules.json``)."""
    root = Path(path).expanduser()
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _json(modules_file)
    kinds = [_kind(m, modules_file) for m in modules]
    if kinds != ["Transformer"]:
        raise UserError(
            f"{modules_file}: task=score runs a CrossEncoder of one Transformer module; this "
            f"lists {', '.join(kinds) or 'nothing'}. HINT: run it with sentence-transformers."
        )
    transformer_dir = root / modules[0].get("path", "")
    config = _json(transformer_dir / "sentence_bert_config.json", missing_ok=True)
    _check_text_transformer(config, transformer_dir, "sequence-classification")
    settings = _json(root / "config_sentence_transformers.json", missing_ok=True)
    prompts, default = _prompts(root, settings)
    return CrossEncoderCheckpoint(
        transformer_dir=transformer_dir,
        prompts=prompts,
        default_prompt_name=default,
        activation_fn=settings.get("activation_fn"),
    )


def _prompts(root: Path, settings: dict) -> tuple[dict[str, str], str | None]:
    """config_sentence_transformers.json's prompts by name, and its default prompt's name
    (which must be one of them)."""
    prompts = {k: v for k, v in (settings.get("prompts") or {}).items() if v is not None}
    default = settings.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise UserError(
            f"{root / 'config_sentence_transformers.json'}: default_prompt_name {default!r} is "
            f"not one of its prompts ({', '.join(prompts) or 'none'}). HINT: fix the file."
        )
    return prompts, default


def _json(path: Path, missing_ok: bool = False) -> Any:
    if missing_ok and not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e}). HINT: check the checkpoint's files.") from e


def _kind(module: dict[str, Any], modules_file: Path) -> str:
    module_type = str(module.get("type", ""))
    kind = module_type.rsplit(".", 1)[-1]
    if not module_type.startswith("sentence_transformers.") or kind not in KNOWN:
        raise UserError(
            f"{modules_file}: module {module.get('name', module.get('idx'))!r} has type "
            f"{module_type!r}, which ddpinfer does not run (it runs {', '.join(KNOWN)}). "
            "HINT: run this checkpoint with sentence-transformers itself; skipping the module "
            "would give other vectors."
        )
    return kind


def _check_text_transformer(config: dict[str, Any], folder: Path, expected: str) -> None:
    """ddpinfer feeds a Transformer module plain text; sentence-transformers 6 renders it through
    the tokenizer's chat template whenever the module takes messages (and infers that it does
    when a chat template is there and no modality_config says otherwise)."""
    where = folder / "sentence_bert_config.json"
    task = config.get("transformer_task", expected)
    if task != expected:
        raise UserError(
            f"{where}: transformer_task={task!r}; ddpinfer runs {expected} Transformer modules "
            "here. HINT: run it with sentence-transformers itself."
        )
    modalities = config.get("modality_config")
    takes_messages = "message" in modalities if modalities else _has_chat_template(folder)
    if takes_messages:
        raise UserError(
            f"{folder}: this Transformer module takes chat messages (its tokenizer has a chat "
            "template), which sentence-transformers renders through the template; ddpinfer "
            "tokenizes plain text and would give other vectors. HINT: run it with "
            "sentence-transformers itself, or save the model with modality_config={'text': ...}."
        )
    kwargs = config.get("processing_kwargs") or {}
    if any(key != "text" for key in kwargs) or set(kwargs.get("text", {})) - {"max_length"}:
        raise UserError(
            f"{where}: processing_kwargs={kwargs}; ddpinfer applies text.max_length only. "
            "HINT: run it with sentence-transformers itself."
        )


def _text_max_length(config: dict[str, Any]) -> int | None:
    return ((config.get("processing_kwargs") or {}).get("text") or {}).get("max_length")


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool(_json(folder / "tokenizer_config.json", missing_ok=True).get("chat_template"))


def _pooling(config: dict[str, Any], folder: Path) -> tuple[tuple[str, ...], bool]:
    mode = config.get("pooling_mode")
    if mode is None:
        mode = [m for key, m in LEGACY_POOLING_KEYS.items() if config.get(key)] or ["mean"]
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    for m in modes:
        if m not in POOLING_MODES:
            raise UserError(
                f"{folder / 'config.json'}: pooling mode {m!r} is not one of "
                f"{', '.join(POOLING_MODES)}. HINT: fix the file."
            )
    return modes, bool(config.get("include_prompt", True))


def _head_module(kind: str, folder: Path) -> DenseLayer | str:
    if kind == "Normalize":
        config = _json(folder / "config.json", missing_ok=True)
        _only_sentence_embedding(config, folder)
        return NORMALIZE
    if kind == "Dense":
        config = _json(folder / "config.json")
        _only_sentence_embedding(config, folder)
        return DenseLayer(
            folder=folder,
            in_features=config["in_features"],
            out_features=config["out_features"],
            bias=config.get("bias", True),
            activation=config.get("activation_function"),
            use_residual=config.get("use_residual", False),
        )
    raise UserError(
        f"{folder}: a {kind} module after pooling. HINT: run it with sentence-transformers itself."
    )


def _only_sentence_embedding(config: dict[str, Any], folder: Path) -> None:
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") not in ("sentence_embedding", None):
            raise UserError(
                f"{folder / 'config.json'}: {key}={config[key]!r}; ddpinfer runs modules on the "
                "pooled sentence embedding only. HINT: run it with sentence-transformers itself."
            )


def resolve_prompt(
    checkpoint: Checkpoint | CrossEncoderCheckpoint | None,
    prompt: str | None,
    prompt_name: str | None,
) -> tuple[str | None, str]:
    """The prompt ``encode(prompt=..., prompt_name=...)`` would prepend, and where it came from
    (for the log): task.prompt, else task.prompt_name, else the model's default prompt."""
    if prompt is not None:
        return prompt, "task.prompt"
    prompts = checkpoint.prompts if checkpoint else {}
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise UserError(
                f"task.prompt_name={prompt_name!r}: the model's config_sentence_transformers.json "
                f"has no such prompt (it has: {', '.join(prompts) or 'none'}). HINT: pick one of "
                "those, or give the text itself as task.prompt='...'."
            )
        return prompts[prompt_name], f"task.prompt_name={prompt_name}"
    if checkpoint and checkpoint.default_prompt_name in prompts:
        name = checkpoint.default_prompt_name
        return prompts[name], f"the model's default_prompt_name {name!r}"
    return None, ""
