"""The real entry point under torchrun (1-3 CPU processes, gloo), over tiny models: a distributed
run must give exactly what one process gives, every id once, in input order."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, write_jsonl

pytestmark = pytest.mark.slow

UNIT = "data.unit_size=3"  # 11 inputs -> 4 units of 3,3,3,2: uneven over 2 and 3 ranks


def job(tmp_path, name, model, task, *extra, nproc=None, data=None):
    out = tmp_path / f"{name}.jsonl"
    args = [
        f"task={task}",
        f"model.path={model}",
        f"data.path={data or tmp_path / 'in.jsonl'}",
        "data.id_field=uid",
        f"output.path={out}",
        f"run.root={tmp_path / 'runs'}",
        "batch_size=4",
        UNIT,
        *extra,
    ]
    if nproc is None:  # a one-process reference, run in this process
        return run_in_process(args, cwd=tmp_path), out
    return check(launch(args, nproc=nproc, cwd=tmp_path)), out


@pytest.fixture
def inputs(tmp_path):
    return write_jsonl(tmp_path / "in.jsonl", TEXTS)


def assert_same_embeddings(a, b):
    assert [r["id"] for r in a] == [r["id"] for r in b]
    np.testing.assert_allclose([r["embedding"] for r in a], [r["embedding"] for r in b], atol=1e-5)


def test_embed_torchrun_1_and_3_equal_one_process(tmp_path, inputs, bert_embedder):
    _, single = job(tmp_path, "single", bert_embedder, "embed")
    reference = read_jsonl(single)
    assert [r["id"] for r in reference] == [f"doc-{i}" for i in range(len(TEXTS))]
    assert all(abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5 for r in reference)
    for nproc in (1, 3):  # (2 ranks: in most other tests)
        result, out = job(tmp_path, f"torchrun{nproc}", bert_embedder, "embed", nproc=nproc)
        assert_same_embeddings(read_jsonl(out), reference)
    run_dir = next((tmp_path / "runs").glob("torchrun3-*"))
    # One shared run directory: a log per rank, one saved config, console output from rank 0 only.
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        "rank0.log",
        "rank1.log",
        "rank2.log",
    ]
    assert (run_dir / "config.yaml").is_file()
    assert "[rank 0]" in result.stderr and "[rank 1]" not in result.stderr
    assert "unit" in (run_dir / "logs" / "rank2.log").read_text()


def test_fewer_inputs_than_ranks(tmp_path, bert_embedder):
    data = write_jsonl(tmp_path / "two.jsonl", TEXTS[:2])
    _, out = job(tmp_path, "tiny", bert_embedder, "embed", nproc=3, data=data)
    assert [r["id"] for r in read_jsonl(out)] == ["doc-0", "doc-1"]


def test_generate_greedy_and_seeded_sampling_do_not_depend_on_world_size(
    tmp_path, inputs, gpt2_generator
):
    args = ("task.max_new_tokens=8",)
    _, single = job(tmp_path, "greedy1", gpt2_generator, "generate", *args)
    _, multi = job(tmp_path, "greedy3", gpt2_generator, "generate", *args, nproc=3)
    greedy = read_jsonl(single)
    assert greedy == read_jsonl(multi)
    assert all(r["generated_text"] for r in greedy)

    sample = (*args, "task.do_sample=true", "task.top_k=20", "seed=3")
    _, s1 = job(tmp_path, "sample1", gpt2_generator, "generate", *sample)
    # Other world size, other batch size, other units: each input still draws its own stream.
    _, s2 = job(
        tmp_path,
        "sample2",
        gpt2_generator,
        "generate",
        *sample,
        "batch_size=2",
        "data.unit_size=5",
        nproc=2,
    )
    sampled = read_jsonl(s1)
    assert sampled == read_jsonl(s2)
    assert sampled != greedy


def test_classify_csv_in_parquet_out(tmp_path, bert_classifier):
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("uid,review\n" + "".join(f'r{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    common = ("data.text_field=review", "task.top_k=2", f"data.path={csv_path}")
    _, single = job(tmp_path, "cls1", bert_classifier, "classify", *common)
    out = tmp_path / "cls2.parquet"
    job(tmp_path, "cls2", bert_classifier, "classify", *common, f"output.path={out}", nproc=2)
    reference = read_jsonl(single)
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == [f"r{i}" for i in range(len(TEXTS))]
    for a, b in zip(reference, table):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-5
        assert a["label"] in {"negative", "neutral", "positive"}
        assert len(a["top_k"]) == 2 and a["top_k"][0]["label"] == a["label"]
    assert json.loads(json.dumps(reference[0]))["score"] >= reference[0]["top_k"][1]["score"]


def test_hf_dataset_output_loads_back_with_datasets(tmp_path, inputs, bert_embedder):
    datasets = pytest.importorskip("datasets")
    _, single = job(tmp_path, "ref", bert_embedder, "embed")
    folder = tmp_path / "embeddings"
    job(
        tmp_path,
        "hf",
        bert_embedder,
        "embed",
        f"output.path={folder}",
        "output.format=hf_dataset",
        nproc=2,
    )
    dataset = datasets.load_from_disk(str(folder))
    reference = read_jsonl(single)
    assert dataset["id"] == [r["id"] for r in reference]
    np.testing.assert_allclose(
        np.array(dataset["embedding"]), [r["embedding"] for r in reference], atol=1e-5
    )


def test_hydra_multirun_runs_every_job(tmp_path, inputs, bert_embedder):
    """`-m` runs each job in this process (the basic launcher) or hands it to a launcher plugin:
    a job must return, not end the process, or the sweep stops after its first job."""
    args = [
        "-m",
        "output.path=a.jsonl,b.jsonl",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"model.path={bert_embedder}",
        f"data.path={inputs}",
        f"run.root={tmp_path / 'runs'}",
    ]
    check(launch(args, cwd=tmp_path))
    assert len(read_jsonl(tmp_path / "a.jsonl")) == len(read_jsonl(tmp_path / "b.jsonl")) == 11
