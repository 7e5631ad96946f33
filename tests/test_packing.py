"""Packed batches (a batch's inputs concatenated, no padding) must give the embeddings padded
batches give, for every model type that packs; anything else must pad or say why not."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TEXTS
from tiny_models import bert_config, bert_tokenizer
from transformers import (
    BertModel,
    CamembertConfig,
    CamembertModel,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from ddpinfer.compute import packing
from ddpinfer.compute.batching import BatchLimits
from ddpinfer.compute.tasks import build_task
from ddpinfer.compute.windows import WindowRunner, prepare_window
from ddpinfer.config import BatchConfig, Config, EmbedTaskConfig, FaultConfig, ModelConfig
from ddpinfer.errors import UserError
from ddpinfer.inputs.readers import Row

CPU = torch.device("cpu")
# Lengths from 3 to 60 tokens, many of them repeated (runs of equal length in a packed batch).
INPUTS = [f"{TEXTS[i % len(TEXTS)]} {'and more ' * (i % 9)}" for i in range(48)]


def _roberta_like(config_class, model_class):
    def save(path, tokenizer):
        config = config_class(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=tokenizer.pad_token_id,  # positions count from pad_token_id + 1
        )
        model_class(config).save_pretrained(path)

    return save


SAVERS = {
    "bert": lambda path, tokenizer: BertModel(bert_config(tokenizer)).save_pretrained(path),
    "roberta": _roberta_like(RobertaConfig, RobertaModel),
    "xlm-roberta": _roberta_like(XLMRobertaConfig, XLMRobertaModel),
    "camembert": _roberta_like(CamembertConfig, CamembertModel),
}


def save_model(path, model_type):
    tokenizer = bert_tokenizer()
    torch.manual_seed(3)
    SAVERS[model_type](path, tokenizer)
    tokenizer.save_pretrained(path)
    return path


def build(path, packing_setting, pooling="mean"):
    cfg = Config(
        task=EmbedTaskConfig(pooling=pooling),
        model=ModelConfig(path=str(path)),
        batch=BatchConfig(packing=packing_setting),
    )
    return build_task(cfg, CPU)


def run(task, limits, fault=None):
    rows = [Row(i, i, t) for i, t in enumerate(INPUTS)]
    window = prepare_window(task, [0, 1, 2], [rows[:16], rows[16:32], rows[32:]], limits)
    done = []
    runner = WindowRunner(task, limits, lambda: None, fault or FaultConfig())
    runner.run(window, done.append)
    done.sort(key=lambda d: d.unit)
    assert [len(d.good) for d in done] == [16, 16, 16]
    return np.concatenate([d.columns["embedding"] for d in done]), runner


def test_every_packing_model_type_is_tested():
    assert set(SAVERS) == set(packing.POSITION_START)


@pytest.mark.parametrize("model_type", sorted(packing.POSITION_START))
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_batches_give_the_embeddings_padded_ones_do(tmp_path, model_type, pooling):
    path = save_model(tmp_path / model_type, model_type)
    limits = BatchLimits(max_rows=64, max_tokens=256)
    padded, padded_runner = run(build(path, "false", pooling), limits)
    task = build(path, "true", pooling)
    assert task.packed
    packed, runner = run(task, limits)
    np.testing.assert_allclose(packed, padded, atol=1e-5)
    stats = runner.stats
    assert stats.real_tokens == stats.padded_tokens == padded_runner.stats.real_tokens
    assert stats.padded_tokens < padded_runner.stats.padded_tokens  # the padding is gone
    assert stats.batches < padded_runner.stats.batches  # and batches hold more inputs


def reference_varlen(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, scale=None):
    """FlashAttention's variable-length contract on [tokens, heads, dim], from the offsets alone
    (never the runs), one input at a time."""
    assert q.is_contiguous() and cu_seq_q.dtype == torch.int32 and cu_seq_q is cu_seq_k
    bounds = cu_seq_q.tolist()
    assert max_q == max_k == max(b - a for a, b in zip(bounds, bounds[1:]))
    out = torch.empty_like(q)
    for a, b in zip(bounds, bounds[1:]):
        each = [x[a:b].transpose(0, 1) for x in (q, k, v)]
        out[a:b] = F.scaled_dot_product_attention(*each, scale=scale).transpose(0, 1)
    return out


def test_the_varlen_kernel_path_gives_the_padded_embeddings(tmp_path, monkeypatch):
    """On CUDA in half precision a packed batch takes one FlashAttention varlen call; here a
    reference kernel with the same contract stands in, so the offsets, views and shapes that
    reach it are checked on CPU."""
    path = save_model(tmp_path / "bert", "bert")
    limits = BatchLimits(max_rows=64, max_tokens=256)
    padded, _ = run(build(path, "false"), limits)
    calls = []

    def kernel(*args, **kwargs):
        calls.append(1)
        return reference_varlen(*args, **kwargs)

    monkeypatch.setattr(packing, "varlen_applies", lambda query: True)
    monkeypatch.setattr(packing, "varlen_attn", kernel)
    packed, _ = run(build(path, "true"), limits)
    assert calls
    np.testing.assert_allclose(packed, padded, atol=1e-5)


def test_the_varlen_kernel_is_only_for_cuda_half_precision():
    assert not packing.varlen_applies(torch.zeros(1, 2, 4, 8))
    assert not packing.varlen_applies(torch.zeros(1, 2, 4, 8, dtype=torch.float16))


def test_auto_packs_on_cpu_for_a_bert_model(bert_embedder):
    assert build(bert_embedder, "auto").packed
    assert not build(bert_embedder, "false").packed


def test_auto_pads_on_cuda_and_with_another_attention(bert_embedder):
    model = build(bert_embedder, "false").model
    assert not packing.choose("auto", model, torch.device("cuda", 0), "auto")
    assert not packing.choose("auto", model, CPU, "eager")
    assert packing.choose("true", model, torch.device("cuda", 0), "sdpa")


def test_a_model_type_that_cannot_pack_pads_or_says_why(tmp_path):
    tokenizer = bert_tokenizer()
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64
    )
    DistilBertModel(config).save_pretrained(tmp_path / "distil")
    tokenizer.save_pretrained(tmp_path / "distil")
    assert not build(tmp_path / "distil", "auto").packed
    with pytest.raises(UserError, match="batch.packing=true: model type 'distilbert'"):
        build(tmp_path / "distil", "true")


def test_packed_attention_refuses_a_mask_it_would_ignore():
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="batch.packing=false"):
        packing.packed_attention(None, q, q, q, torch.zeros(1, 1, 4, 4), packed_runs=((0, 1, 4),))


def test_a_packed_batch_out_of_memory_is_split_and_its_budget_shrinks(tmp_path, caplog):
    path = save_model(tmp_path / "bert", "bert")
    limits = BatchLimits(max_rows=64, max_tokens=512)
    reference, _ = run(build(path, "false"), limits)
    packed, runner = run(build(path, "true"), limits, FaultConfig(oom_above=5))
    np.testing.assert_allclose(packed, reference, atol=1e-5)
    # a packed budget is halved from the batch's real tokens, for that width and wider only
    first = re.search(
        r"up to (\d+) tokens wide \((\d+) tokens\).*at most (\d+) tokens", caplog.text
    )
    width, tokens, cap = map(int, first.groups())
    assert tokens > width * 2 and cap == tokens // 2
    assert runner.budget.max_tokens(width) <= cap and runner.budget.max_tokens(4) == 512
