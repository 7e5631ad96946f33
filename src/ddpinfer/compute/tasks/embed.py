"""Sentence embeddings as ``SentenceTransformer.encode`` computes them. Column: "embedding",
``[rows, dim]`` in task.precision's dtype.

A sentence-transformers folder runs its own modules (``plan/st_checkpoint.py``): its Transformer's
sequence limit and lower-casing, its Pooling, its Dense and Normalize layers, its prompts; a plain
transformers checkpoint is AutoModel, then task.pooling (mean by default), then normalize. Then,
for both, as encode does: truncate_dim, normalize_embeddings (task.normalize), precision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModel

from ddpinfer.compute import model_loading, packing
from ddpinfer.compute.tasks.base import Columns, Task, prepare_each, tokenize
from ddpinfer.compute.tasks.pooling import pool_packed, pool_padded
from ddpinfer.compute.tasks.quantize import quantize
from ddpinfer.compute.tasks.st_head import build_head
from ddpinfer.config import Config
from ddpinfer.inputs import Row
from ddpinfer.plan import st_checkpoint
from ddpinfer.plan.st_needs import load_ranges

log = logging.getLogger("ddpinfer")


@dataclass
class Embedding:
    """What turns token states into the stored vectors."""

    pooling: tuple[str, ...] = ("mean",)
    prompt: str = ""
    prompt_length: int = 0
    """Tokens left out of pooling at the start of each input (include_prompt=false), else 0."""
    head: torch.nn.Module | None = None
    truncate_dim: int | None = None
    normalize: bool = True
    precision: str = "float32"
    ranges: np.ndarray | None = None


class EmbedTask(Task):
    def __init__(
        self,
        tokenizer,
        model,
        max_length,
        embedding: Embedding,
        packed: bool = False,
        count_tokens: bool = False,
    ) -> None:
        super().__init__(tokenizer, model, max_length)
        self.embedding = embedding
        self.count_tokens = count_tokens
        """Also a "prompt_tokens" column, the tokens each input gave the model (an OpenAI
        embeddings batch's ``usage``)."""
        self.packed = packed
        if packed:
            self._first_position = packing.position_start(model.config) or 0
            packing.use(model)

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        prompt = self.embedding.prompt
        return prepare_each(self._tokenize, [prompt + row.text for row in rows])

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        if self.packed:
            return packing.pack(items, self._first_position)
        return super().collate(items)

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, Any], rows: Sequence[int]) -> Columns:
        e = self.embedding
        if self.packed:
            lengths = batch[packing.LENGTHS]
            model_inputs = {k: v for k, v in batch.items() if k != packing.LENGTHS}
            hidden = self.model(**model_inputs).last_hidden_state[0]
            pooled = pool_packed(hidden, lengths, e.pooling, e.prompt_length)
            tokens = torch.as_tensor(lengths)
        else:
            hidden = self.model(**batch).last_hidden_state
            pooled = pool_padded(hidden, batch["attention_mask"], e.pooling, e.prompt_length)
            tokens = batch["attention_mask"].sum(dim=1)
        if e.head is not None:
            pooled = e.head(pooled)
        if e.truncate_dim is not None:
            pooled = pooled[..., : e.truncate_dim]
        if e.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        columns = {"embedding": quantize(pooled.float().cpu().numpy(), e.precision, e.ranges)}
        if self.count_tokens:
            columns["prompt_tokens"] = tokens.cpu().numpy().astype(np.int64)
        return columns


def prompt_length(tokenizer: Any, prompt: str, max_length: int | None) -> int:
    """The prompt's tokens at the start of an input, as sentence-transformers counts them: the
    prompt tokenized alone, less a trailing special token (its [SEP] or EOS)."""
    ids = tokenize(tokenizer, [prompt], max_length)[0]
    return len(ids) - 1 if ids and ids[-1] in tokenizer.all_special_ids else len(ids)


def lower_case(tokenizer: Any) -> None:
    """Transformer's do_lower_case: a Lowercase normalizer first, unless one lower-cases already."""
    from tokenizers.normalizers import BertNormalizer, Lowercase, Sequence

    normalizer = tokenizer.backend_tokenizer.normalizer
    parts = list(normalizer) if isinstance(normalizer, Sequence) else [normalizer]
    if any(
        isinstance(n, Lowercase) or (isinstance(n, BertNormalizer) and n.lowercase) for n in parts
    ):
        return
    tokenizer.backend_tokenizer.normalizer = Sequence(
        [Lowercase(), *(n for n in parts if n is not None)]
    )


def build(cfg: Config, path: str, device: torch.device) -> EmbedTask:
    checkpoint = st_checkpoint.read(path)
    folder = str(checkpoint.transformer_dir) if checkpoint else path
    tokenizer = model_loading.load_tokenizer(cfg.model, folder)
    model = model_loading.load_model(AutoModel, cfg.model, folder, device)
    limit = model_loading.max_length(
        cfg.model, tokenizer, st_max_length(checkpoint, tokenizer, model)
    )
    if checkpoint and checkpoint.do_lower_case:
        lower_case(tokenizer)
    embedding = embedding_steps(cfg, checkpoint, tokenizer, model, limit)
    packed = packing.choose(cfg.batch.packing, model, device, cfg.model.attn_implementation)
    count_tokens = cfg.output.format == "openai_batch_embeddings"  # its usage
    return EmbedTask(tokenizer, model, limit, embedding, packed, count_tokens)


def embedding_steps(
    cfg: Config, checkpoint: st_checkpoint.Checkpoint | None, tokenizer, model, limit
) -> Embedding:
    """task.* where set, else the checkpoint's own settings, else a plain checkpoint's
    defaults (mean pooling, normalized)."""
    task = cfg.task
    prompt, source = st_checkpoint.resolve_prompt(checkpoint, task.prompt, task.prompt_name)
    if prompt:
        log.info("each input starts with the prompt %r (%s)", prompt, source)
    include_prompt = task.include_prompt
    if include_prompt is None:
        include_prompt = checkpoint.include_prompt if checkpoint else True
    embedding = Embedding(prompt=prompt or "", precision=task.precision)
    if prompt and not include_prompt:
        embedding.prompt_length = prompt_length(tokenizer, prompt, limit)
    if checkpoint:
        embedding.pooling = checkpoint.pooling
        embedding.truncate_dim = checkpoint.truncate_dim
        embedding.normalize = False  # where its own Normalize module says
        device = model_loading.input_device(model)
        embedding.head = build_head(
            checkpoint.head, cfg.model.trust_remote_code, device, model.dtype
        )
    if task.pooling:
        embedding.pooling = (task.pooling,)
    if task.truncate_dim:
        embedding.truncate_dim = task.truncate_dim
    if task.normalize is not None:
        embedding.normalize = task.normalize
    if task.ranges:
        embedding.ranges = load_ranges(task.ranges, output_dim(model, embedding))
    return embedding


def st_max_length(checkpoint: Any, tokenizer: Any, model: Any) -> int | None:
    """A sentence-transformers Transformer's limit: its max_seq_length, else the tokenizer's
    capped at the model's positions. None for plain checkpoints (model_loading decides)."""
    if checkpoint is None:
        return None
    if checkpoint.max_seq_length:
        return checkpoint.max_seq_length
    positions = getattr(model.config, "max_position_embeddings", -1)
    limit = tokenizer.model_max_length
    return min(limit, positions) if positions and positions > 0 else limit


def output_dim(model: Any, embedding: Embedding) -> int:
    """The vectors' dimension before quantization, found by pooling one dummy state."""
    device = model_loading.input_device(model)
    hidden = torch.zeros((1, 1, model.config.hidden_size), dtype=model.dtype, device=device)
    pooled = pool_padded(
        hidden, torch.ones((1, 1), dtype=torch.long, device=device), embedding.pooling
    )
    if embedding.head is not None:
        with torch.inference_mode():
            pooled = embedding.head(pooled)
    dim = pooled.shape[-1]
    return min(dim, embedding.truncate_dim) if embedding.truncate_dim else dim
