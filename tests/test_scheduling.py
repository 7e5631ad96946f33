"""Work claimed on demand, batches by token budget, tokenization once, binary outputs: none of it
may change a result. Real torchrun processes on CPU over a tiny model."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    TEXTS,
    check,
    launch,
    read_jsonl,
    run_in_process,
    start,
    torchrun_cmd,
    wait_for,
    write_jsonl,
)

from ddpinfer.compute.batching import BatchLimits
from ddpinfer.compute.tasks import build_task
from ddpinfer.compute.windows import WindowRunner, prepare_window
from ddpinfer.config import Config, EmbedTaskConfig, FaultConfig, ModelConfig
from ddpinfer.errors import UserError
from ddpinfer.inputs.readers import Row

N = 40


@pytest.fixture
def corpus(tmp_path):
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and more ' * (i % 7)}#{i}" for i in range(N)]
    return write_jsonl(tmp_path / "in.jsonl", texts)


def embed(tmp_path, model, name, *extra, nproc=None):
    out = tmp_path / name
    args = [f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            f"output.path={out}", f"run.name={name}", *extra]  # fmt: skip
    if nproc is None:  # a one-process reference, run in this process
        return run_in_process(args, cwd=tmp_path), out
    return check(launch(args, nproc=nproc, cwd=tmp_path)), out


def read(path) -> str:
    return path.read_text() if path.exists() else ""


def rank_stats(tmp_path, name, world):
    return [json.loads((tmp_path / "runs" / name / "stats" / f"rank{r}.json").read_text())
            for r in range(world)]  # fmt: skip


def embeddings(path):
    return np.array([r["embedding"] for r in read_jsonl(path)])


@pytest.mark.slow
def test_a_slow_rank_takes_fewer_units_and_results_do_not_change(tmp_path, corpus, bert_embedder):
    _, reference = embed(tmp_path, bert_embedder, "one.jsonl")
    # The slow rank holds before its first batch (fault.hold_file holds fault.slow_rank only),
    # its first unit claimed: started late on a busy machine, it would find every unit taken.
    hold = tmp_path / "hold"
    hold.touch()
    slow = ["data.unit_size=2", "batch_size=2", "fault.slow_rank=1", "fault.delay_s=0.25",
            f"fault.hold_file={hold}"]  # fmt: skip
    out = tmp_path / "slow.jsonl"
    args = [f"model.path={bert_embedder}", "data.path=in.jsonl", "data.id_field=uid",
            f"output.path={out}", "run.name=slow.jsonl", *slow]  # fmt: skip
    proc = start(torchrun_cmd(args, 2), tmp_path, tmp_path / "console.txt")
    logs = tmp_path / "runs" / "slow.jsonl" / "logs"
    try:
        wait_for(lambda: "fault.hold_file: rank 1 holds" in read(logs / "rank1.log"))
        hold.unlink()
        assert proc.wait(timeout=600) == 0, read(tmp_path / "console.txt")
    finally:
        proc.kill()
    fast, slow_rank = rank_stats(tmp_path, "slow.jsonl", 2)
    assert fast["inputs"] + slow_rank["inputs"] == N
    assert fast["inputs"] >= 2 * slow_rank["inputs"] > 0  # shares follow speed
    for r in (fast, slow_rank):  # forward passes (the injected delay included) within the phase
        assert 0 < r["compute_seconds"] <= r["seconds"]
    assert [r["id"] for r in read_jsonl(out)] == [f"doc-{i}" for i in range(N)]
    np.testing.assert_allclose(embeddings(out), embeddings(reference), atol=1e-5)


def test_npy_and_parquet_outputs_hold_the_same_float32_embeddings(tmp_path, corpus, bert_embedder):
    # in this process: the format is what is checked here (2 ranks: the merge tests)
    _, reference = embed(tmp_path, bert_embedder, "ref.jsonl", "batch.max_tokens=64")
    _, npy = embed(tmp_path, bert_embedder, "emb.npy", "data.unit_size=8")
    matrix = np.load(npy)
    assert matrix.dtype == np.float32 and matrix.shape == (N, 32)
    ids = [json.loads(line)["id"] for line in (tmp_path / "emb.ids.jsonl").open()]
    assert ids == [f"doc-{i}" for i in range(N)]
    np.testing.assert_allclose(matrix, embeddings(reference), atol=1e-5)
    _, parquet = embed(tmp_path, bert_embedder, "emb.parquet", "batch_size=3")
    table = pq.read_table(parquet)
    assert table.schema.field("embedding").type.value_type == pa.float32()
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), matrix, atol=1e-5)


def test_npy_output_is_refused_for_tasks_without_embeddings(tmp_path, corpus, gpt2_generator):
    # in this process: a refusal is a UserError, which the entry point turns into exit 2
    # (tests/test_job_safety.py); a process start would only make the fast suite slower
    args = [f"model.path={gpt2_generator}", "task=generate", "data.path=in.jsonl"]
    with pytest.raises(UserError, match="output.format=npy holds embeddings"):
        run_in_process([*args, "output.path=out.npy"], tmp_path)


def test_every_text_is_tokenized_once(bert_embedder):
    task = build_task(
        Config(task=EmbedTaskConfig(), model=ModelConfig(path=str(bert_embedder))),
        torch.device("cpu"),
    )
    seen: list[str] = []

    class CountingTokenizer:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, *args, **kwargs):
            seen.extend(texts if isinstance(texts, list) else [texts])
            return self.inner(texts, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    task.tokenizer = CountingTokenizer(task.tokenizer)
    rows = [Row(i, i, t) for i, t in enumerate(TEXTS * 3)]
    limits = BatchLimits(max_rows=4, max_tokens=64)
    window = prepare_window(task, [0, 1], [rows[:20], rows[20:]], limits)
    done = []
    WindowRunner(task, limits, lambda: None, FaultConfig()).run(window, done.append)
    assert sorted(seen) == sorted(r.text for r in rows)  # each text exactly once
    assert [d.unit for d in done] and sorted(d.unit for d in done) == [0, 1]
    assert sum(len(d.good) for d in done) == len(rows)
