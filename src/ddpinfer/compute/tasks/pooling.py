"""Token states to one vector per input, as sentence-transformers' ``Pooling`` computes it.

Two layouts: padded ``[rows, width, dim]`` with an attention mask (either padding side), and
packed ``[tokens, dim]`` with each input's length (``compute/packing.py``). Every mode is
per-input, so both give the same vectors. Several modes are concatenated in the order given.
``prompt_length`` > 0 leaves each input's first ``prompt_length`` tokens out (Pooling's
``include_prompt=false``); weightedmean keeps the other tokens' position weights, as
sentence-transformers does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pool_padded(
    hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str], prompt_length: int = 0
) -> torch.Tensor:
    """Pooling._forward_padded: ``hidden`` ``[rows, width, dim]``, ``mask`` ``[rows, width]``."""
    original = mask
    if prompt_length:
        mask = _exclude_prompt(mask, prompt_length)
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "max":
            fill = mask.unsqueeze(-1).expand_as(hidden).to(hidden.dtype) == 0
            out.append(hidden.masked_fill(fill, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            total = (hidden * weights).sum(dim=1, dtype=acc)
            count = torch.clamp(weights.sum(dim=1, dtype=acc), min=1e-9)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc)
            positions = positions.view(1, -1, 1) - original.to(torch.int32).argmax(dim=1).view(
                -1, 1, 1
            )
            weights = mask.unsqueeze(-1).to(acc) * positions
            total = (hidden * weights).sum(dim=1)
            out.append((total / torch.clamp(weights.sum(dim=1), min=1e-9)).to(hidden.dtype))
        elif mode == "lasttoken":
            width = hidden.shape[1]
            values, from_end = mask.flip(1).max(1)
            from_end = torch.where(values == 0, width - 1, from_end)
            masked = hidden * mask.unsqueeze(-1).to(hidden.dtype)
            out.append(
                masked[torch.arange(hidden.shape[0], device=hidden.device), width - from_end - 1]
            )
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


def _exclude_prompt(mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """The mask without each row's first ``prompt_length`` real tokens (after left padding)."""
    pad = mask.to(torch.int32).argmax(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return mask.masked_fill(positions < (pad + prompt_length).unsqueeze(1), 0)


def pool_packed(
    hidden: torch.Tensor, lengths: torch.Tensor, modes: Sequence[str], prompt_length: int = 0
) -> torch.Tensor:
    """Pooling._forward_flattened: ``hidden`` ``[tokens, dim]`` holding the inputs one after
    another, ``lengths`` ``[rows]`` their token counts."""
    rows, dim = len(lengths), hidden.shape[1]
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    embeddings, counts = hidden, lengths
    segment = positions = None
    if any(m not in ("cls", "lasttoken") for m in modes):
        segment = torch.repeat_interleave(
            torch.arange(rows, device=hidden.device), lengths, output_size=hidden.shape[0]
        )
        if prompt_length or "weightedmean" in modes:
            offsets = torch.repeat_interleave(starts, lengths, output_size=hidden.shape[0])
            positions = torch.arange(hidden.shape[0], device=hidden.device) - offsets
        if prompt_length:
            kept = positions >= prompt_length
            embeddings, segment, positions = hidden[kept], segment[kept], positions[kept]
            counts = lengths - prompt_length
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    out = []
    for mode in modes:
        if mode == "cls":
            skip = torch.where(lengths > prompt_length, prompt_length, 0) if prompt_length else 0
            out.append(hidden[starts + skip])
        elif mode == "lasttoken":
            out.append(hidden[ends - 1])
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = hidden.new_zeros((rows, dim), dtype=acc).index_add_(
                0, segment, embeddings.to(acc)
            )
            count = torch.clamp(counts.unsqueeze(1), min=1e-9).to(acc)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
        elif mode == "max":
            index = segment.unsqueeze(1).expand(-1, dim)
            init = hidden.new_full((rows, dim), float("-inf"))
            out.append(init.scatter_reduce(0, index, embeddings, reduce="amax"))
        elif mode == "weightedmean":
            weights = (positions + 1).to(acc).unsqueeze(1)
            total = hidden.new_zeros((rows, dim), dtype=acc).index_add_(
                0, segment, embeddings * weights
            )
            norm = hidden.new_zeros((rows, 1), dtype=acc).index_add_(0, segment, weights)
            out.append((total / torch.clamp(norm, min=1e-9)).to(hidden.dtype))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
