"""task=score against CrossEncoder.predict itself, on tiny cross-encoders saved by
sentence-transformers: one label (sigmoid), several labels (none, or a saved activation),
prompts, and a record without its pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, write_records
from st_models import save_cross_encoder

from ddpinfer.errors import UserError

PAIRS = [(t, TEXTS[(i * 3 + 1) % len(TEXTS)]) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def one_label(tmp_path_factory):
    return save_cross_encoder(tmp_path_factory.mktemp("ce") / "one", 1)


@pytest.fixture(scope="module")
def three_labels(tmp_path_factory):
    return save_cross_encoder(tmp_path_factory.mktemp("ce") / "three", 3)


def predict(path, pairs=PAIRS, **kwargs):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu").predict(pairs, batch_size=4, **kwargs)


def write_pairs(path, pairs=PAIRS):
    return write_records(path, [{"id": i, "q": a, "doc": b} for i, (a, b) in enumerate(pairs)])


def score(tmp_path, model, *overrides, pairs=PAIRS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_pairs(tmp_path / "pairs.jsonl", pairs)
    run_in_process([
        "task=score", f"model.path={model}", f"data.path={data}", "data.text_field=q",
        "data.pair_field=doc", f"output.path={tmp_path / 'out.jsonl'}",
        f"run.dir={tmp_path / 'run'}", "batch.max_tokens=96", *overrides,
    ], cwd=tmp_path)  # fmt: skip
    return read_jsonl(tmp_path / "out.jsonl")


def test_one_label_is_predict_with_its_sigmoid(tmp_path, one_label):
    records = score(tmp_path, one_label)
    assert [r["id"] for r in records] == list(range(len(PAIRS)))
    ours = np.array([r["score"] for r in records])
    np.testing.assert_allclose(ours, predict(one_label), atol=1e-5)
    assert ((ours > 0) & (ours < 1)).all()


def test_several_labels_are_a_list_per_pair(tmp_path, three_labels):
    ours = np.array([r["score"] for r in score(tmp_path / "a", three_labels)])
    assert ours.shape == (len(PAIRS), 3)
    np.testing.assert_allclose(ours, predict(three_labels), atol=1e-5)
    soft = score(tmp_path / "b", three_labels, "task.apply_softmax=true")
    expected = predict(three_labels, apply_softmax=True)
    np.testing.assert_allclose([r["score"] for r in soft], expected, atol=1e-5)


def test_a_saved_activation_and_a_default_prompt(tmp_path):
    model = save_cross_encoder(tmp_path / "tanh", 2, torch.nn.Tanh())
    settings = model / "config_sentence_transformers.json"
    saved = json.loads(settings.read_text())
    saved.update(prompts={"rerank": "rerank: "}, default_prompt_name="rerank")
    settings.write_text(json.dumps(saved))
    ours = np.array([r["score"] for r in score(tmp_path / "run", model)])
    np.testing.assert_allclose(ours, predict(model), atol=1e-5)
    assert np.abs(ours - predict(model, prompt="")).max() > 1e-6  # the prompt made a difference


def test_a_legacy_activation_in_config_json(tmp_path):
    """sentence-transformers 4 kept the activation in config.json."""
    model = save_cross_encoder(tmp_path / "legacy", 1)
    (model / "config_sentence_transformers.json").unlink()
    (model / "modules.json").unlink()
    (model / "sentence_bert_config.json").unlink()
    config = json.loads((model / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (model / "config.json").write_text(json.dumps(config))
    ours = np.array([r["score"] for r in score(tmp_path / "run", model)])
    np.testing.assert_allclose(ours, predict(model), atol=1e-5)


def test_a_record_without_its_pair_is_a_bad_input_record(tmp_path, one_label):
    data = write_records(
        tmp_path / "pairs.jsonl", [{"id": 0, "q": "a", "doc": "b"}, {"id": 1, "q": "c"}]
    )
    with pytest.raises(UserError, match=r"pairs.jsonl:2: no field 'doc'"):
        run_in_process([
            "task=score", f"model.path={one_label}", f"data.path={data}", "data.text_field=q",
            "data.pair_field=doc", f"run.dir={tmp_path / 'run'}",
        ], cwd=tmp_path)  # fmt: skip


def test_score_needs_a_pair_field(tmp_path, one_label):
    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(UserError, match="data.pair_field=<field>"):
        run_in_process([
            "task=score", f"model.path={one_label}", f"data.path={data}", "data.text_field=q",
            f"run.dir={tmp_path / 'run'}",
        ], cwd=tmp_path)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_scores_on_one_and_two_ranks(tmp_path, three_labels, nproc):
    pairs = [(f"{a} {i}", b) for i, (a, b) in enumerate(PAIRS * 4)]
    data = write_pairs(tmp_path / "pairs.jsonl", pairs)
    args = ["task=score", f"model.path={three_labels}", f"data.path={data}", "data.text_field=q",
            "data.pair_field=doc", "output.path=out.parquet", "run.dir=run", "data.unit_size=8",
            "batch.max_tokens=96"]  # fmt: skip
    check(launch(args, nproc=nproc, cwd=tmp_path))
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table["id"].to_pylist() == list(range(len(pairs)))
    ours = np.array(table["score"].to_pylist())
    np.testing.assert_allclose(ours, predict(three_labels, pairs), atol=1e-5)
