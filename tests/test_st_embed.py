"""task=embed against SentenceTransformer.encode itself, on tiny sentence-transformers models
saved by sentence-transformers: Dense heads, every pooling mode, prompts (default ones, and
left out of pooling), last-token pooling on a decoder, truncate_dim, and modules ddpinfer does
not run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, write_jsonl
from st_models import PROMPTS, save_bert, save_decoder, save_st

from ddpinfer.compute.tasks.pooling import pool_packed, pool_padded
from ddpinfer.errors import UserError

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_bert(tmp_path_factory.mktemp("st") / "bert")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return save_decoder(tmp_path_factory.mktemp("st") / "qwen2")


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory, bert):
    """CLS pooling, Dense 32 -> 24 (tanh) -> 16 (GELU), Normalize, and a default prompt."""
    return save_st(
        tmp_path_factory.mktemp("st") / "dense", bert, "cls",
        dense=((24, torch.nn.Tanh()), (16, torch.nn.GELU())),
        prompts=PROMPTS, default_prompt_name="query",
    )  # fmt: skip


def encode(path, texts=TEXTS, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, batch_size=4, **kwargs)


def embed(tmp_path, model, *overrides, texts=TEXTS, fmt="jsonl"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / f"out.{fmt}"
    run_in_process([
        "task=embed", f"model.path={model}", f"data.path={data}", f"output.path={out}",
        f"run.dir={tmp_path / 'run'}", "batch.max_tokens=96", *overrides,
    ], cwd=tmp_path)  # fmt: skip
    return out


def vectors(path):
    return np.array([r["embedding"] for r in read_jsonl(path)], dtype=np.float32)


def test_a_dense_head_and_the_default_prompt_are_the_checkpoints(tmp_path, dense_model, capfd):
    ours = vectors(embed(tmp_path, dense_model))
    assert "'query: ' (the model's default_prompt_name 'query')" in capfd.readouterr().err
    reference = encode(dense_model)  # the default prompt, "query: "
    assert ours.shape == reference.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert not np.allclose(ours, encode(dense_model, prompt=""), atol=1e-3)


@pytest.mark.parametrize("packing", ["true", "false"])
def test_every_pooling_mode_and_a_prompt_left_out_of_pooling(tmp_path, bert, packing):
    model = save_st(
        tmp_path / "modes", bert, MODES, include_prompt=False, normalize=False, prompts=PROMPTS
    )
    for overrides, kwargs in [
        (["task.prompt_name=passage"], {"prompt_name": "passage"}),
        (["task.prompt='represent this: '"], {"prompt": "represent this: "}),
        ([], {}),
    ]:
        out = embed(tmp_path, model, f"batch.packing={packing}", "run.fresh=true", *overrides)
        np.testing.assert_allclose(vectors(out), encode(model, **kwargs), atol=2e-5)


def test_include_prompt_false_changes_the_vectors_as_sentence_transformers_does(tmp_path, bert):
    model = save_st(tmp_path / "mean", bert, "mean", prompts=PROMPTS)
    out = vectors(embed(tmp_path, model, "task.prompt_name=query", "task.include_prompt=false"))
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model), device="cpu")
    st.set_pooling_include_prompt(False)
    np.testing.assert_allclose(out, st.encode(TEXTS, prompt_name="query"), atol=1e-5)
    assert not np.allclose(out, st.encode(TEXTS), atol=1e-3)


def test_last_token_pooling_on_a_decoder(tmp_path, decoder):
    model = save_st(tmp_path / "qwen-st", decoder, "lasttoken", prompts={"query": "instruct: "})
    ours = vectors(embed(tmp_path, model, "task.prompt_name=query"))
    np.testing.assert_allclose(ours, encode(model, prompt_name="query"), atol=1e-5)
    # a plain transformers checkpoint with task.pooling=lasttoken: the same vectors
    plain = vectors(embed(tmp_path, decoder, "task.pooling=lasttoken", "run.fresh=true"))
    np.testing.assert_allclose(plain, encode(model), atol=1e-5)


def test_truncate_dim_then_normalize(tmp_path, dense_model):
    ours = vectors(embed(tmp_path, dense_model, "task.truncate_dim=8", "task.normalize=true"))
    reference = encode(dense_model, truncate_dim=8, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_a_legacy_checkpoints_sequence_limit(tmp_path, bert):
    model = save_st(tmp_path / "legacy", bert, "mean")
    (model / "sentence_bert_config.json").write_text(
        '{"max_seq_length": 6, "do_lower_case": false}'
    )
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 512}))
    long_texts = [t for t in TEXTS if len(t.split()) > 8]
    ours = vectors(embed(tmp_path, model, texts=long_texts))
    np.testing.assert_allclose(ours, encode(model, long_texts), atol=1e-5)


def test_a_module_ddpinfer_does_not_run_stops_the_run_before_any_work(tmp_path, bert):
    model = save_st(tmp_path / "lstm", bert, "mean")
    modules = json.loads((model / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"}
    )
    (model / "modules.json").write_text(json.dumps(modules))
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    # in this process: a UserError is exit 2 from the entry point (tests/test_job_safety.py)
    with pytest.raises(UserError) as refused:
        run_in_process([f"model.path={model}", f"data.path={data}", "run.dir=run"], tmp_path)
    assert "sentence_transformers.models.LSTM" in str(refused.value)
    assert str(model / "modules.json") in str(refused.value)
    assert not list((tmp_path / "run").glob("parts/*/*.arrow"))


def test_an_unknown_prompt_name_is_refused_naming_the_prompts(tmp_path, dense_model):
    with pytest.raises(UserError, match="nope.*it has: document, passage, query"):
        embed(tmp_path, dense_model, "task.prompt_name=nope")


@pytest.mark.parametrize("prompt_length", [0, 3])
@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_pooling_is_padded_pooling(prompt_length, side):
    torch.manual_seed(0)
    lengths = torch.tensor([5, 5, 9, 4, 12])
    hidden = torch.randn(int(lengths.sum()), 8)
    width = int(lengths.max())
    padded = torch.zeros(len(lengths), width, 8)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, (start, n) in enumerate(
        zip((torch.cumsum(lengths, 0) - lengths).tolist(), lengths.tolist())
    ):
        at = slice(0, n) if side == "right" else slice(width - n, width)
        padded[i, at], mask[i, at] = hidden[start : start + n], 1
    for mode in MODES:
        expected = pool_padded(padded, mask, (mode,), prompt_length)
        np.testing.assert_allclose(
            pool_packed(hidden, lengths, (mode,), prompt_length), expected, atol=1e-6, err_msg=mode
        )


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_a_dense_head_and_prompt_on_one_and_two_ranks(tmp_path, dense_model, nproc):
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(40)]
    data = write_jsonl(tmp_path / "in.jsonl", texts)
    args = [f"model.path={dense_model}", f"data.path={data}", "output.path=out.jsonl",
            "run.dir=run", "data.unit_size=8", "batch.max_tokens=96",
            "task.prompt_name=passage"]  # fmt: skip
    check(launch(args, nproc=nproc, cwd=tmp_path))
    ours = vectors(tmp_path / "out.jsonl")
    np.testing.assert_allclose(ours, encode(dense_model, texts, prompt_name="passage"), atol=1e-5)


def read_back(path, fmt):
    """The embeddings of an output file as the README says to read them, with their dtype."""
    if fmt == "npy":
        return np.load(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        column = pq.read_table(path)["embedding"].combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    return np.array([r["embedding"] for r in read_jsonl(path)])


STORED = {"float16": np.float16, "int8": np.int8, "uint8": np.uint8, "binary": np.int8,
          "ubinary": np.uint8}  # fmt: skip


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "npy"])
def test_each_precision_is_quantize_embeddings_stored_compactly(tmp_path, dense_model, fmt):
    from sentence_transformers.util.quantization import quantize_embeddings

    floats = vectors(embed(tmp_path / "float32", dense_model))
    reference = encode(dense_model)
    ranges = np.stack([reference.min(0), reference.max(0)])
    np.save(tmp_path / "ranges.npy", ranges)
    for precision, dtype in STORED.items():
        extra = [f"task.ranges={tmp_path / 'ranges.npy'}"] if precision.endswith("int8") else []
        setting = f"task.precision={precision}"
        out = embed(tmp_path / precision, dense_model, setting, *extra, fmt=fmt)
        got = read_back(out, fmt)
        if precision == "float16":
            expected = floats.astype(np.float16)
        else:
            expected = quantize_embeddings(floats, precision, ranges=ranges)
        assert expected.dtype == dtype
        if fmt == "jsonl":
            first = read_jsonl(out)[0]["embedding"]
            assert all(isinstance(v, int if dtype != np.float16 else float) for v in first)
            got = got.astype(dtype)
        assert got.dtype == dtype, precision
        np.testing.assert_array_equal(got, expected, err_msg=precision)
        if precision.endswith("binary"):  # against encode itself
            np.testing.assert_array_equal(got, encode(dense_model, precision=precision))


@pytest.mark.slow
def test_int8_from_a_ranges_file_on_two_ranks_is_one_ranks(tmp_path, dense_model):
    """Fixed ranges make int8 independent of which rows a rank holds: the same codes, but for
    a value that other batches round across a step boundary (float32 sums in another order)."""
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(40)]
    floats = vectors(embed(tmp_path / "one", dense_model, texts=texts))
    np.save(tmp_path / "ranges.npy", np.stack([floats.min(0), floats.max(0)]))
    data = write_jsonl(tmp_path / "in.jsonl", texts)
    args = [f"model.path={dense_model}", f"data.path={data}", "output.path=out.parquet",
            "run.dir=run", "data.unit_size=8", "task.precision=int8",
            f"task.ranges={tmp_path / 'ranges.npy'}"]  # fmt: skip
    check(launch(args, nproc=2, cwd=tmp_path))
    from sentence_transformers.util.quantization import quantize_embeddings

    expected = quantize_embeddings(floats, "int8", ranges=np.load(tmp_path / "ranges.npy"))
    got = read_back(tmp_path / "out.parquet", "parquet")
    assert got.dtype == np.int8
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.97


def test_another_prompt_is_a_different_run(tmp_path, dense_model):
    embed(tmp_path, dense_model, "task.prompt_name=passage")
    with pytest.raises(UserError, match=r"different run \(task.prompt_name: 'passage' -> 'query'"):
        embed(tmp_path, dense_model, "task.prompt_name=query")


def test_the_contents_of_a_ranges_file_are_part_of_the_run(tmp_path):
    """int8/uint8 codes depend on the ranges file's values: new values in the same file are
    another run, refused like any other changed setting."""
    import numpy as np

    from ddpinfer.config import EmbedTaskConfig
    from ddpinfer.plan.fingerprint import task_settings

    ranges = tmp_path / "ranges.npy"
    np.save(ranges, np.array([[-1.0, -1.0], [1.0, 1.0]], dtype=np.float32))
    task = EmbedTaskConfig(precision="int8", ranges=str(ranges))
    before = task_settings(task)
    np.save(ranges, np.array([[-2.0, -2.0], [2.0, 2.0]], dtype=np.float32))
    assert task_settings(task) != before
