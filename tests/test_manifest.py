"""The end-of-run summary and <run dir>/manifest.json, end to end over two ranks: the numbers
agree with the output, and a resumed run appends an attempt."""

import hashlib
import json

import pytest
from helpers import TEXTS, check, launch, read_jsonl, small_units, write_jsonl

from ddpinfer.results import summary
from ddpinfer.results.manifest import append_attempt, model_identity, output_checksum

pytestmark = pytest.mark.slow


def test_summary_table_has_a_line_per_rank_and_totals():
    ranks = [
        {"rows": 6, "errors": 1, "real_tokens": 30, "padded_tokens": 40, "seconds": 2.0},
        {"rows": 5, "errors": 0, "real_tokens": 20, "padded_tokens": 20, "seconds": 1.0},
    ]
    lines = summary.table(ranks).splitlines()
    assert lines[0].split() == [
        "rank",
        "inputs",
        "tokens",
        "seconds",
        "inputs/s",
        "padding",
        "errors",
    ]
    assert lines[1].split() == ["0", "6", "30", "2.0", "3.0", "0.75", "1"]
    assert lines[3].split() == ["all", "11", "50", "2.0", "5.5", "0.83", "1"]


def test_append_attempt_and_checksums(tmp_path):
    for n in range(2):
        append_attempt(tmp_path, {"n": n})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {
        "attempts": [{"n": 0}, {"n": 1}]
    }
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    assert model_identity(str(tmp_path))["weights_digest"]
    assert output_checksum(tmp_path / "w.safetensors") == hashlib.sha256(b"weights").hexdigest()


def test_manifest_agrees_with_the_output_and_grows_on_resume(tmp_path, bert_embedder):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "out.jsonl"
    args = [f"model.path={bert_embedder}", *small_units(data, out, tmp_path / "runs")]
    result = check(launch(args, nproc=2, cwd=tmp_path))
    assert "summary (this attempt)" in result.stderr
    assert [line.split()[:2] for line in result.stderr.splitlines() if line.startswith(" all")] == [
        ["all", "11"]
    ]
    run_dir = next((tmp_path / "runs").iterdir())
    entry = json.loads((run_dir / "manifest.json").read_text())["attempts"][0]
    rows = read_jsonl(out)
    assert entry["output"]["rows"] == len(rows) == 11 and entry["errors"] == 0
    assert entry["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert entry["output"]["path"] == str(out.resolve()) and entry["output"]["format"] == "jsonl"
    assert entry["inputs"]["rows"] == 11 and entry["inputs"]["digest"]
    assert entry["throughput"]["inputs"] == sum(r["rows"] for r in entry["ranks"]) == 11
    assert entry["throughput"]["tokens"] == sum(r["real_tokens"] for r in entry["ranks"]) > 0
    assert entry["world_size"] == 2 and entry["launcher"]["name"] == "torchrun"
    assert [d["device"] for d in entry["devices"]] == ["cpu", "cpu"]
    assert entry["model"]["path"] == str(bert_embedder) and entry["model"]["weights_digest"]
    assert entry["config"]["batch_size"] == 4 and entry["versions"]["torch"]
    assert set(entry["timings_s"]) == {"startup", "preflight", "model_load", "inference", "merge"}

    check(launch(args, nproc=2, cwd=tmp_path))  # everything is done: a resume with no work
    attempts = json.loads((run_dir / "manifest.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["throughput"]["inputs"] == 0
    assert attempts[1]["output"]["sha256"] == entry["output"]["sha256"]
