"""Tiny sentence-transformers models and cross-encoders, built with sentence-transformers' own
module classes around the tiny random transformers of ``tiny_models`` and saved as
sentence-transformers saves them: the references ddpinfer's embed and score tasks must match."""

from __future__ import annotations

import json
from pathlib import Path

import tiny_models
import torch
from tokenizers import processors
from transformers import BertForSequenceClassification, Qwen2Config, Qwen2Model


def _st():
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    return SentenceTransformer, CrossEncoder, Transformer, Pooling, Dense, Normalize


PROMPTS = {"query": "query: ", "passage": "passage: "}


def pair_tokenizer():
    """The tiny BERT tokenizer, also able to tokenize pairs ([CLS] a [SEP] b [SEP])."""
    tok = tiny_models.bert_tokenizer()
    backend = tok.backend_tokenizer
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def save_bert(path: Path, seed: int = 0) -> Path:
    tokenizer = pair_tokenizer()
    torch.manual_seed(seed)
    BertModel = tiny_models.BertModel
    BertModel(tiny_models.bert_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_decoder(path: Path, seed: int = 0) -> Path:
    """A tiny Qwen2 (the layout of Qwen3-Embedding and gte-Qwen2) with the WordPiece tokenizer."""
    tokenizer = pair_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    Qwen2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_st(
    path: Path,
    base: Path,
    pooling: str | tuple[str, ...] = "mean",
    *,
    include_prompt: bool = True,
    dense: tuple[tuple[int, torch.nn.Module], ...] = (),
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    max_seq_length: int | None = None,
    legacy_config: dict | None = None,
) -> Path:
    """Transformer(base) + Pooling + Dense layers (out_features, activation) + Normalize, saved
    by sentence-transformers; ``legacy_config`` rewrites sentence_bert_config.json as older
    releases wrote it."""
    SentenceTransformer, _, Transformer, Pooling, Dense, Normalize = _st()
    torch.manual_seed(1)
    transformer = Transformer(str(base), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    width = modules[1].get_embedding_dimension()
    for out, act in dense:
        modules.append(Dense(width, out, activation_function=act))
        width = out
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(
        modules=modules, prompts=prompts, default_prompt_name=default_prompt_name, device="cpu"
    )
    model.save(str(path))
    if legacy_config is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps(legacy_config))
    return path


def save_cross_encoder(
    path: Path, num_labels: int, activation: torch.nn.Module | None = None
) -> Path:
    """A CrossEncoder over a tiny BertForSequenceClassification, saved by sentence-transformers."""
    _, CrossEncoder, *_ = _st()
    base = path.with_name(path.name + "-base")
    tokenizer = pair_tokenizer()
    torch.manual_seed(2)
    config = tiny_models.bert_config(tokenizer, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    kwargs = {} if activation is None else {"activation_fn": activation}
    model = CrossEncoder(str(base), num_labels=num_labels, device="cpu", **kwargs)
    model.save(str(path))
    return path
