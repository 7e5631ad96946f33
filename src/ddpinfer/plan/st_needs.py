"""What task=embed and task=score read besides the inputs, checked on every rank before the
model loads: a sentence-transformers checkpoint's own files (an unknown module, a missing
prompt) and the ranges file of task.precision=int8|uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.plan import st_checkpoint


def check_st_task(cfg: Config, path: str) -> None:
    if cfg.task.name not in ("embed", "score") or not Path(path).expanduser().is_dir():
        return
    if cfg.task.name == "score":
        checkpoint = st_checkpoint.read_cross_encoder(path)
    else:
        checkpoint = st_checkpoint.read(path)
    st_checkpoint.resolve_prompt(checkpoint, cfg.task.prompt, cfg.task.prompt_name)
    if getattr(cfg.task, "ranges", None):
        load_ranges(cfg.task.ranges)


def load_ranges(path: str, dim: int | None = None) -> np.ndarray:
    """task.ranges: a .npy of shape ``[2, dim]`` (each dimension's minimum, then maximum)."""
    hint = "HINT: np.save(path, np.stack([emb.min(0), emb.max(0)])) over float32 embeddings"
    try:
        ranges = np.load(Path(path).expanduser(), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"task.ranges={path}: cannot read it as a .npy file ({e}). {hint}.") from e
    if ranges.ndim != 2 or ranges.shape[0] != 2 or (dim is not None and ranges.shape[1] != dim):
        want = f"[2, {dim}]" if dim is not None else "[2, dim]"
        raise UserError(
            f"task.ranges={path}: shape {list(ranges.shape)}, expected {want} (each dimension's "
            f"minimum, then maximum, of the embeddings after truncate_dim). {hint}."
        )
    return ranges.astype(np.float32, copy=False)
