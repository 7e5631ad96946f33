"""Embeddings in a smaller precision, exactly as sentence-transformers' ``quantize_embeddings``
computes them (float16 is a plain cast, which sentence-transformers leaves to the user).

int8 and uint8 take fixed per-dimension ranges from a file: ranges computed from the rows at
hand would depend on which rows a rank holds, so on the world size.
"""

from __future__ import annotations

import numpy as np

DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}
"""The numpy dtype each precision is stored as."""


def stored_dim(dim: int, precision: str) -> int:
    """Values per stored vector: binary precisions pack 8 dimensions into a byte."""
    return (dim + 7) // 8 if precision.endswith("binary") else dim


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None) -> np.ndarray:
    """float32 ``[rows, dim]`` in ``precision`` (``ranges`` ``[2, dim]`` for int8 and uint8)."""
    if precision == "float32":
        return embeddings
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision.endswith("int8"):
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1) - 128).astype(np.int8)
    if precision == "ubinary":
        return np.packbits(embeddings > 0, axis=-1)
    raise ValueError(f"precision {precision!r}")
