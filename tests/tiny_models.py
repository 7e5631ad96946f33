"""Tiny random-weight models for tests, built from transformers configs with a fixed seed and
saved with ``save_pretrained``, so runs load them through the same path users take."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "distributed inference runs every input exactly once",
    "a small model with random weights is enough for tests",
    "hello world, this is a prompt for generation",
    "numbers like 12 and 345 and punctuation!?",
]


def bert_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer trained on a few sentences: BERT-style, and made offline."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def bert_config(tokenizer, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **kwargs,
    )


def save_bert_embedder(path: Path) -> Path:
    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    BertModel(bert_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_bert_classifier(path: Path) -> Path:
    tokenizer = bert_tokenizer()
    torch.manual_seed(1)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    config = bert_config(
        tokenizer, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def save_gpt2_generator(path: Path) -> Path:
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(2)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_layer=2,
        n_embd=64,
        n_head=2,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
