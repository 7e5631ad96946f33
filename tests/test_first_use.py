"""What a new user trips over in everyday workflows: files as editors write them, an ``id``
field, ``+key`` typos, small inputs under skip, number types, clutter from refused runs, the
progress bar, ``python -m ddpinfer``, sweeps and appended rows."""

import io
import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    REPO,
    TEXTS,
    check,
    read_jsonl,
    run_files,
    run_in_process,
    subprocess_env,
    write_jsonl,
)
from hydra import compose, initialize_config_dir

from ddpinfer.config import ConfigError, register_configs, to_config
from ddpinfer.errors import UserError
from ddpinfer.inputs.readers import InputError, open_spec, read_rows
from ddpinfer.inputs.scan import scan
from ddpinfer.launch.sweeps import names_its_point, per_job, written_names
from ddpinfer.results.progress import Snapshot, _Bar, progress_line

register_configs()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def rank0_logs(folder) -> str:
    return "".join(p.read_text() for p in sorted(folder.glob("runs/*/logs/rank0.log")))


def ids_and_texts(spec):
    return [(row.id, row.text) for row in read_rows(spec)]


def test_a_csv_saved_by_excel_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    reviews = tmp_path / "reviews.csv"
    reviews.write_bytes(b"\xef\xbb\xbfreview_id,review,lang\r\nr1,great,en\r\nr2,bof,fr\r\n")
    spec = open_spec(str(reviews), "auto", "review", "review_id")
    assert ids_and_texts(spec) == [("r1", "great"), ("r2", "bof")]
    first_text = tmp_path / "texts.csv"
    first_text.write_bytes(b"\xef\xbb\xbftext,n\r\nhello,1\r\n")
    assert ids_and_texts(open_spec(str(first_text), "auto", "text", None)) == [(0, "hello")]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')
    assert scan(open_spec(str(jsonl), "auto", "text", None)).num_rows == 2


def test_a_field_named_id_is_the_id_and_the_log_says_so(tmp_path, bert_embedder):
    records = [{"id": f"doc-{i:04x}", "text": text} for i, text in enumerate(TEXTS[:5])]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = open_spec(str(data), "auto", "text", None)
    assert spec.id_field == "id" and spec.id_detected
    assert not open_spec(str(data), "auto", "text", "text").id_detected  # another one named
    run_in_process(
        [f"model.path={bert_embedder}", f"data.path={data}", "output.path=out.jsonl"], tmp_path
    )
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [r["id"] for r in records]
    assert "the records have a field named 'id': it is each output row's id" in rank0_logs(tmp_path)
    with pytest.raises(ValueError, match="other than 'id': every output row has its id"):
        to_config(composed("output.keep_fields=[id]"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("+task.top_k=3", r"\+task.top_k is not a key of task=embed.*a key of task=classify"),
        ("+data.text_feld=body", r"\+data.text_feld is not a key of data.*data.text_field\?"),
        ("+seeds=3", r"\+seeds is not a key of the config.*seed\?"),
    ],
)
def test_a_misspelt_plus_key_is_refused_like_any_typo(override, message):
    with pytest.raises(ConfigError, match=message):
        to_config(composed(override))


def test_a_custom_task_still_takes_keys_of_its_own():
    cfg = to_config(composed("task=custom", "task.target=m:T", "+task.threshold=0.5"))
    assert cfg.task.threshold == 0.5


def test_ids_1_and_quoted_1_are_one_id_twice(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": 1, "text": "a"}\n{"id": "1", "text": "b"}\n')
    with pytest.raises(InputError, match=r"in.jsonl:2: duplicate id '1' \(row 1\), first at row 0"):
        scan(open_spec(str(data), "auto", "text", None))


def test_top_k_scores_are_float32_like_the_score_and_a_top_k_over_the_labels_is_said(
    tmp_path, bert_classifier
):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS[:4])
    common = [f"model.path={bert_classifier}", f"data.path={data}", "data.id_field=uid"]
    run_in_process([*common, "task=classify", "task.top_k=5", "output.path=c.jsonl"], tmp_path)
    said = r"task.top_k=5, but model.path=\S+ has 3 labels: top_k holds all 3"
    assert re.search(said, rank0_logs(tmp_path))
    for record in read_jsonl(tmp_path / "c.jsonl"):
        assert len(record["top_k"]) == 3
        best = record["top_k"][0]
        assert (best["label"], best["score"]) == (record["label"], record["score"])
    run_in_process([*common, "task=classify", "task.top_k=2", "output.path=c.parquet"], tmp_path)
    schema = pq.read_schema(tmp_path / "c.parquet")
    assert str(schema.field("score").type) == "float"
    assert str(schema.field("top_k").type.value_type.field("score").type) == "float"


def test_a_refused_run_leaves_no_run_directory_and_a_run_names_its_command(
    tmp_path, bert_embedder, monkeypatch
):
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="no such file"):
        run_in_process([f"model.path={bert_embedder}", "data.path=missing.jsonl"], tmp_path)
    with pytest.raises(UserError, match="model.path=models/my-classifier: no such directory"):
        run_in_process(["model.path=models/my-classifier"], tmp_path)  # a relative typo
    assert not runs.exists() or not any(runs.iterdir())
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS[:3])
    monkeypatch.setattr(sys, "argv", ["launch/infer.py", f"data.path={data}"])
    run_in_process([f"model.path={bert_embedder}", f"data.path={data}"], tmp_path)
    (run_dir,) = runs.iterdir()
    assert f"command: launch/infer.py data.path={data}" in (run_dir / "logs/rank0.log").read_text()


def test_a_model_path_that_looks_like_a_folder_is_missing_before_any_download(
    tmp_path, monkeypatch
):
    import socket

    from huggingface_hub import constants

    from ddpinfer.plan.task_needs import ModelPathError, check_model_path

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as typed, with no variable set
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: asked.append(host))
    monkeypatch.chdir(tmp_path)
    for path in ("models/my-classifier", "./my-classifier", "~/no-such-model-28", "../m"):
        folder = re.escape(str(Path(path).expanduser().absolute()))
        with pytest.raises(ModelPathError, match=rf"model.path={re.escape(path)}: no such "
                           rf"directory \({folder}\)"):  # fmt: skip
            check_model_path(path)
    assert asked == []


def test_sampling_settings_without_sampling_are_refused():
    for override in ("task.top_p=0.9", "task.temperature=0.7", "task.top_k=5"):
        with pytest.raises(ValueError, match=f"{override.split('=')[0]} applies to sampling only"):
            to_config(composed("task=generate", override))
    assert to_config(composed("task=generate", "task.do_sample=true", "task.top_p=0.9"))


def test_a_fresh_start_forgets_the_attempts_it_threw_away(tmp_path, bert_embedder):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS[:3])
    args = [f"model.path={bert_embedder}", f"data.path={data}", "run.name=job"]
    run_in_process(args, tmp_path)
    run_in_process(args, tmp_path)
    manifest = tmp_path / "runs/job/manifest.json"
    assert len(json.loads(manifest.read_text())["attempts"]) == 2
    run_in_process([*args, "run.fresh=true"], tmp_path)
    assert len(json.loads(manifest.read_text())["attempts"]) == 1


def test_the_bar_shows_one_rate_and_its_own_eta(monkeypatch):
    snapshot = Snapshot(done=512, total=1001, elapsed_s=8.0, inputs=[512], tokens=[5120])
    assert "slowest rank" not in progress_line(snapshot)  # one rank: one rate
    two = Snapshot(done=512, total=1001, elapsed_s=8.0, inputs=[412, 100], tokens=[4000, 1000])
    assert "slowest rank 1 at 12.5 inputs/s" in progress_line(two)
    console = io.StringIO()
    monkeypatch.setattr(sys, "stderr", console)
    bar = _Bar(total=1001, initial=0)
    bar.show(snapshot)
    bar.close()
    shown = console.getvalue().replace("\r", "\n").splitlines()[-1]
    assert "512/1001 [" in shown and "ETA 0:00:08, 64.0 inputs/s, 640 tokens/s]" in shown
    assert "input/s" not in shown and "slowest" not in shown  # no second rate from tqdm


def sweep_point(overrides: list[str], swept: set[str], values: dict[str, str]):
    """The config one point of ``-m`` runs with: ``overrides`` are the point's own values, as
    Hydra composes them for the job."""
    cfg = composed("task=classify", "model.path=m", *overrides)
    own = frozenset(k for k, raw in written_names(cfg).items() if names_its_point(raw, swept))
    return per_job(to_config(cfg), swept, values, own)


def test_a_sweep_keeps_a_path_that_names_its_point_and_tags_a_fixed_one():
    point = ({"task.top_k"}, {"task.top_k": "2"})
    config, tag = sweep_point(["task.top_k=2", "output.path=k_${task.top_k}.jsonl"], *point)
    assert (config.output.path, config.run.name, tag) == ("k_2.jsonl", None, None)
    assert names_its_point("k-${hydra:job.num}.jsonl", set())  # Hydra's job number
    config, _ = sweep_point(["task.top_k=2", "run.name=k${task.top_k}"], *point)
    assert (config.output.path, config.run.name) == (None, "k2")
    config, tag = sweep_point(["task.top_k=2", "output.path=out/k.jsonl"], *point)
    assert (config.output.path, config.run.name, tag) == ("out/k.task.top_k=2.jsonl", None, tag)
    config, _ = sweep_point(["task.top_k=2", "output.path=k.jsonl", "run.name=job"], *point)
    assert (config.output.path, config.run.name) == ("k.task.top_k=2.jsonl", "job.task.top_k=2")
    # a path that interpolates a key the sweep does not vary is the same for every point
    config, _ = sweep_point(["task.top_k=2", "output.path=${task.name}.jsonl"], *point)
    assert config.output.path == "classify.task.top_k=2.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize(
    "output, written",
    [("k.jsonl", "k.task.top_k={k}.jsonl"), ("k_${task.top_k}.jsonl", "k_{k}.jsonl")],
)
def test_python_m_ddpinfer_runs_a_sweep_with_one_output_per_point(
    tmp_path, bert_classifier, output, written
):
    import subprocess

    data = write_jsonl(tmp_path / "in.jsonl", TEXTS[:4])
    cmd = [
        sys.executable,
        "-m",
        "ddpinfer",
        "-m",
        "task=classify",
        "task.top_k=1,2",
        f"model.path={bert_classifier}",
        f"data.path={data}",
        "data.id_field=uid",
        f"output.path={output}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    result = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    check(result)
    tagged = f"sweep point task.top_k=2: {written.format(k=2)}" in result.stderr
    assert tagged == (output == "k.jsonl")  # a path that names its point is kept, unannounced
    outputs = [written.format(k=k) for k in (1, 2)]
    assert sorted(p.name for p in tmp_path.glob("k*.jsonl")) == outputs
    for k in (1, 2):
        rows = read_jsonl(tmp_path / written.format(k=k))
        assert len(rows) == 4 and all(len(r["top_k"]) == k for r in rows)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # a run directory per point


def test_appended_rows_keep_the_finished_units_and_removed_rows_drop_theirs(
    tmp_path, bert_embedder
):
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(130)]  # units of 64: 64, 64, 2
    data = write_jsonl(tmp_path / "in.jsonl", texts)
    args = [f"model.path={bert_embedder}", f"data.path={data}", "data.id_field=uid"]
    args += ["output.path=out.jsonl", "run.name=job"]
    run_in_process(args, tmp_path)
    parts = tmp_path / "runs/job/parts"
    first = {p.name: p.stat().st_mtime_ns for p in run_files(parts)}
    assert len(first) == 3
    write_jsonl(data, [*texts, "one more row", "and another"])
    run_in_process(args, tmp_path)
    log = (tmp_path / "runs/job/logs/rank0.log").read_text()
    assert "resuming: 2 of 3 work unit(s) already done" in log  # the short last one changed
    now = {p.name: p.stat().st_mtime_ns for p in run_files(parts)}
    assert [first[n] == now[n] for n in sorted(first)] == [True, True, False]
    run_in_process([*args[:3], "output.path=ref.jsonl"], tmp_path)
    assert read_jsonl(tmp_path / "out.jsonl") == read_jsonl(tmp_path / "ref.jsonl")
    write_jsonl(data, texts[:70])  # rows removed at the end: units 0 and 1 remain
    run_in_process(args, tmp_path)
    assert len(run_files(parts)) == 2
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [f"doc-{i}" for i in range(70)]
