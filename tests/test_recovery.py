"""Recovering inside a rank: OOM splits the batch, an input that breaks the model is isolated,
and bad configuration is refused before heavy work. One process, the real run path."""

import json

import numpy as np
import pytest
import tiny_models
from helpers import TEXTS, read_jsonl, run_in_process, write_jsonl

from ddpinfer.model_loading import ModelLoadError


def embed_args(tmp_path, model, name, *extra):
    return [
        f"model.path={model}",
        f"data.path={tmp_path / 'in.jsonl'}",
        "data.id_field=uid",
        f"output.path={tmp_path / name}",
        f"run.root={tmp_path / 'runs'}",
        "batch_size=8",
        *extra,
    ]


def test_injected_oom_splits_batches_and_gives_identical_embeddings(
    tmp_path, bert_embedder, caplog
):
    write_jsonl(tmp_path / "in.jsonl", TEXTS * 3)
    run_in_process(embed_args(tmp_path, bert_embedder, "clean.jsonl"))
    run_in_process(embed_args(tmp_path, bert_embedder, "oom.jsonl", "fault.oom_above=2"))
    clean, oom = read_jsonl(tmp_path / "clean.jsonl"), read_jsonl(tmp_path / "oom.jsonl")
    assert [r["id"] for r in clean] == [r["id"] for r in oom]
    np.testing.assert_allclose(
        [r["embedding"] for r in clean], [r["embedding"] for r in oom], atol=1e-5
    )
    log = next((tmp_path / "runs").glob("oom-*/logs/rank0.log")).read_text()
    assert "out of memory at 8 inputs" in log  # batch_size=8: the first batch
    assert "now go at most 2 per batch" in log  # fault.oom_above=2: the budget shrank to fit


def test_injected_oom_in_generation_gives_identical_text(tmp_path, gpt2_generator):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    args = ["task=generate", "task.max_new_tokens=6", "task.do_sample=true", "seed=5"]
    run_in_process([*embed_args(tmp_path, gpt2_generator, "clean.jsonl"), *args])
    run_in_process([*embed_args(tmp_path, gpt2_generator, "oom.jsonl"), *args, "fault.oom_above=1"])
    assert read_jsonl(tmp_path / "clean.jsonl") == read_jsonl(tmp_path / "oom.jsonl")


def test_an_input_that_breaks_the_model_is_isolated(tmp_path, gpt2_generator):
    # The tiny GPT-2 has 128 positions and no tokenizer limit: a long prompt makes it raise.
    texts = [*TEXTS[:5], " ".join(["token"] * 400), *TEXTS[5:]]
    write_jsonl(tmp_path / "in.jsonl", texts)
    result = run_in_process(
        [
            *embed_args(tmp_path, gpt2_generator, "out.jsonl"),
            "task=generate",
            "task.max_new_tokens=4",
        ]
    )
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == [f"doc-{i}" for i in range(len(texts)) if i != 5]
    errors = read_jsonl(result.run_dir / "errors.jsonl")
    assert [e["id"] for e in errors] == ["doc-5"] and "Error" in errors[0]["error"]


def test_missing_model_is_refused_before_loading(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    with pytest.raises(ValueError, match=r"model.path=/no/such/model: no such directory"):
        run_in_process(embed_args(tmp_path, "/no/such/model", "out.jsonl"))


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    (tmp_path / "a-file").write_text("")
    args = embed_args(tmp_path, bert_embedder, "x")
    args[3] = f"output.path={tmp_path / 'a-file' / 'out.jsonl'}"
    with pytest.raises(ValueError, match=r"output folder .*a-file is not writable"):
        run_in_process(args)


def test_model_needing_remote_code_says_how(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    model = tmp_path / "custom-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "ddpinfer-custom",
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModel": "modeling_custom.CustomModel",
                },
            }
        )
    )
    tiny_models.bert_tokenizer().save_pretrained(model)  # a real tokenizer; custom model code
    with pytest.raises(ModelLoadError, match=r"HINT: .*model.trust_remote_code=true"):
        run_in_process(embed_args(tmp_path, model, "out.jsonl"))


def test_cls_pooling_without_normalisation_is_the_first_token_state(tmp_path, bert_embedder):
    """task.pooling=cls and task.normalize=false, against the model run directly."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    run_in_process(
        [
            *embed_args(tmp_path, bert_embedder, "cls.jsonl"),
            "task.pooling=cls",
            "task.normalize=false",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(bert_embedder)
    model = AutoModel.from_pretrained(bert_embedder).eval()
    with torch.inference_mode():
        expected = [
            model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0, 0].tolist()
            for t in TEXTS
        ]
    got = [r["embedding"] for r in read_jsonl(tmp_path / "cls.jsonl")]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert abs(np.linalg.norm(got[0]) - 1) > 1e-3  # really not normalised
