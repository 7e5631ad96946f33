"""Padding-free batches for encoders: a batch's inputs concatenated into one sequence.

A padded batch computes ``rows × widest`` tokens; a packed one computes exactly its real tokens
and needs no attention mask, which lets the attention kernel take its mask-free path. The model
sees one row of all the batch's tokens, with position ids restarting at each input, and
attention that stays inside each input: ``packed_attention`` runs one mask-free
``scaled_dot_product_attention`` per run of equally long neighbours (batches are length-sorted,
so runs are long), or on CUDA in half precision one call of PyTorch's FlashAttention
variable-length kernel (``torch.nn.attention.varlen``) for the whole row. This is
text-embeddings-inference's "unpadded" batching, for any device and without the flash-attn
package.

Only for architectures known to compute every position from its own input's tokens and
positions alone (``POSITION_START``): anything else, and any attention mask or bias the model
builds itself, would silently mix inputs, so those stay padded (and a mask raises).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig

from ddpinfer.errors import UserError

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None

ATTENTION = "ddpinfer_packed"
RUNS = "packed_runs"
"""The forward kwarg with the batch's runs: ``(start, count, length)`` per run of ``count``
consecutive inputs of ``length`` tokens starting at token ``start``."""
CU_SEQ = "packed_cu_seq"
"""The forward kwarg with each input's first token and the total, ``[rows + 1]`` int32 (what
FlashAttention's variable-length kernel reads)."""
LENGTHS = "lengths"
"""The packed batch's key for each input's token count (pooling and throughput read it; the
model never sees it)."""


def _roberta_start(config: PretrainedConfig) -> int:
    return config.pad_token_id + 1  # RoBERTa counts positions from padding_idx + 1


POSITION_START = {
    "bert": lambda config: 0,
    "roberta": _roberta_start,
    "xlm-roberta": _roberta_start,
    "camembert": _roberta_start,
}
"""Model types that can run packed, and the position id of each input's first token (what the
model computes itself from a padded row). Each is checked against padded batches in the tests."""


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each input of a packed row: ``query``/``key``/``value`` are
    ``[1, heads, tokens, head_dim]``; returns ``[1, tokens, heads, head_dim]`` like transformers'
    own attention functions."""
    runs = kwargs.get(RUNS)
    if runs is None or attention_mask is not None or query.shape[0] != 1:
        raise RuntimeError(
            f"{ATTENTION} attention needs one packed row, its {RUNS} and no attention mask "
            "(this model builds a mask or bias of its own: run it with batch.packing=false)"
        )
    if varlen_applies(query):
        return _varlen(query, key, value, kwargs[CU_SEQ], runs, scaling), None
    _, heads, tokens, dim = query.shape
    out = query.new_empty((1, tokens, heads, dim))
    for start, count, length in runs:
        attended = F.scaled_dot_product_attention(
            _run(query, start, count, length),
            _run(key, start, count, length),
            _run(value, start, count, length),
            dropout_p=dropout,
            scale=scaling,
        )  # [count, heads, length, dim]
        out[0, start : start + count * length].view(count, length, heads, dim).copy_(
            attended.transpose(1, 2)
        )  # one copy, straight into place
    return out, None


def varlen_applies(query: torch.Tensor) -> bool:
    """Whether PyTorch's FlashAttention variable-length kernel can take this batch: CUDA, half
    precision, head sizes it supports. It attends within each input in one call however many
    lengths the batch has, where the SDPA fallback runs one call per run of equal lengths."""
    dim = query.shape[-1]
    return (
        varlen_attn is not None
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and dim % 8 == 0
        and dim <= 256
    )


def _varlen(query, key, value, cu_seq: torch.Tensor, runs, scaling) -> torch.Tensor:
    longest = max(length for _, _, length in runs)
    # [tokens, heads, dim] views of the [1, heads, tokens, dim] projections: no copy
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    out = varlen_attn(q, k, v, cu_seq, cu_seq, longest, longest, scale=scaling)
    return out.unsqueeze(0)  # [1, tokens, heads, dim]


def _run(x: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """``count`` inputs of ``length`` tokens from ``start`` of a packed ``[1, heads, tokens,
    dim]`` tensor, as a batch ``[count, heads, length, dim]`` (a view, no copy)."""
    return x[0, :, start : start + count * length].unflatten(1, (count, length)).transpose(0, 1)


AttentionInterface.register(ATTENTION, packed_attention)


def position_start(config: PretrainedConfig) -> int | None:
    """The first position id of each packed input, or None if this model cannot run packed."""
    start = POSITION_START.get(getattr(config, "model_type", ""))
    return None if start is None else start(config)


def choose(setting: str, model: torch.nn.Module, device: torch.device, attn: str) -> bool:
    """Whether to pack, for batch.packing=``setting`` (auto | true | false).

    auto packs on CPU, where every padded token costs its full share of compute. On CUDA it
    pads: in float32 a packed batch runs one attention call per run of equal lengths, and small
    kernels cost more there than the little padding sorted batches have. In half precision
    ``true`` takes the varlen kernel (one call); ``benchmarks/bench_packing.py --device cuda``
    measures whether that beats padding, which has not been measured yet."""
    if setting == "false":
        return False
    reason = None
    if position_start(model.config) is None:
        reason = (
            f"model type {model.config.model_type!r} is not one that runs packed "
            f"({', '.join(POSITION_START)})"
        )
    elif attn not in ("auto", "sdpa"):
        reason = f"model.attn_implementation={attn} pads (packing brings its own attention)"
    if setting == "true":
        if reason:
            raise UserError(f"batch.packing=true: {reason}. HINT: batch.packing=auto pads instead.")
        return True
    return reason is None and device.type == "cpu"


def use(model: torch.nn.Module) -> None:
    """Switch ``model`` to packed attention (every batch it runs must be packed from now on)."""
    model.set_attn_implementation(ATTENTION)


def pack(ids: Sequence[Sequence[int]], first_position: int) -> dict[str, Any]:
    """One packed row: ``input_ids`` and ``position_ids`` ``[1, tokens]``, ``lengths`` ``[rows]``,
    and for ``packed_attention`` the runs of equal lengths and the inputs' offsets."""
    lengths = [len(x) for x in ids]
    runs: list[list[int]] = []
    start = 0
    for n in lengths:
        if runs and runs[-1][2] == n:
            runs[-1][1] += 1
        else:
            runs.append([start, 1, n])
        start += n
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.long)
    positions = torch.cat([torch.arange(first_position, first_position + n) for n in lengths])
    return {
        "input_ids": flat.unsqueeze(0),
        "position_ids": positions.unsqueeze(0),
        LENGTHS: torch.tensor(lengths, dtype=torch.long),
        RUNS: tuple(tuple(r) for r in runs),
        CU_SEQ: torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32),
    }
