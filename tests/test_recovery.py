"""Recovering inside a rank: OOM splits the batch, an input that breaks the model is isolated,
and bad configuration is refused before heavy work. One process, the real run path."""

import json
import re

import numpy as np
import pytest
import tiny_models
from helpers import TEXTS, read_jsonl, run_files, run_in_process, write_jsonl

from ddpinfer.compute.model_loading import ModelLoadError


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
    failed = [int(n) for n in re.findall(r"out of memory at (\d+) inputs", log)]
    assert failed and min(failed) > 2, log  # only batches over fault.oom_above=2 failed
    # the budget shrank to fit: halved from each failed batch's tokens, each one below the last
    caps = [int(n) for n in re.findall(r"now hold at most (\d+) tokens", log)]
    tokens = [int(n) for n in re.findall(r"wide \((\d+) tokens\)", log)]
    assert caps and all(c <= t // 2 for c, t in zip(caps, tokens)) and min(caps) < 1024 // 2, log


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


def test_a_transient_cuda_error_fails_the_unit_not_its_inputs_and_a_rerun_retries_it(
    tmp_path, bert_embedder
):
    from ddpinfer.compute.windows import TransientError

    write_jsonl(tmp_path / "in.jsonl", TEXTS * 3)
    common = ["data.unit_size=4", "batch_size=2", "batch.sort_rows=4"]  # one unit per window
    run_in_process(embed_args(tmp_path, bert_embedder, "clean.jsonl", *common))
    args = embed_args(tmp_path, bert_embedder, "out.jsonl", *common)
    with pytest.raises(TransientError, match="retried when the same command runs again"):
        run_in_process([*args, "fault.cuda_error_at_batch=5"])
    run_dir = next((tmp_path / "runs").glob("out-*"))
    kept = sorted(p.name for p in run_files(run_dir / "parts"))
    # 4 batches of 2: units 0 and 1; the 5th batch, unit 2's first, is in its window's journal
    assert kept[1:] == ["unit-000000.arrow", "unit-000001.arrow"] and kept[0].startswith("journal-")
    result = run_in_process(args)  # the same command again: the failed unit is retried
    assert read_jsonl(result.run_dir / "errors.jsonl") == []
    clean, out = read_jsonl(tmp_path / "clean.jsonl"), read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in clean]
    np.testing.assert_allclose(
        [r["embedding"] for r in out], [r["embedding"] for r in clean], atol=1e-5
    )


def test_a_unit_whose_every_input_fails_is_recorded_and_the_rest_runs(tmp_path, gpt2_generator):
    too_long = " ".join(["token"] * 400)  # the tiny GPT-2 has 128 positions
    texts = [*TEXTS[:4], too_long, too_long, *TEXTS[4:6]]  # units of 2: unit 2 is all bad
    write_jsonl(tmp_path / "in.jsonl", texts)
    args = [*embed_args(tmp_path, gpt2_generator, "out.jsonl"), "task=generate"]
    result = run_in_process([*args, "task.max_new_tokens=2", "data.unit_size=2"])
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [
        f"doc-{i}" for i in (0, 1, 2, 3, 6, 7)
    ]
    assert [e["id"] for e in read_jsonl(result.run_dir / "errors.jsonl")] == ["doc-4", "doc-5"]
