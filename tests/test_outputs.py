"""What a run writes beside its run directory: the format from output.path, side files named
from the whole output name, and nothing replaced or deleted that the run did not write."""

import json

import numpy as np
import pytest
from helpers import TEXTS, read_jsonl, run_in_process, write_jsonl

from ddpinfer.config import OutputConfig
from ddpinfer.errors import UserError
from ddpinfer.inputs import open_spec
from ddpinfer.plan.outputs import (
    Output,
    OutputError,
    check_output,
    ids_path,
    record_written,
    resolve_output,
)


def resolved(path, fmt="auto", run_dir="runs/x"):
    from pathlib import Path

    return resolve_output(OutputConfig(path=path, format=fmt), Path(run_dir))


def test_the_format_comes_from_a_known_suffix_or_is_asked_for():
    assert resolved("a/b.parquet").format == "parquet"
    assert resolved("a/b.JSONL").format == "jsonl"
    assert resolved("e.csv", "jsonl") == Output(resolved("e.csv", "jsonl").path, "jsonl")
    with pytest.raises(OutputError, match=r"output.path=e.csv: cannot tell .* from '.csv'"):
        resolved("e.csv")  # JSON Lines silently written into e.csv, before
    with pytest.raises(OutputError, match="ends in '/', a folder, but output.format=jsonl"):
        resolved("out/ds2/", "jsonl")  # wrote a file named ds2, before
    assert resolved("out/ds2/", "hf_dataset").path.name == "ds2"
    dot = resolved(".", "hf_dataset").path
    assert dot.is_absolute() and dot.name  # "has an empty name", before
    assert resolved(None).path.name == "output.jsonl"


def test_side_files_are_named_from_the_whole_output_name(tmp_path):
    assert ids_path(tmp_path / "emb.npy").name == "emb.ids.jsonl"
    assert ids_path(tmp_path / "emb.a.npy").name == "emb.a.ids.jsonl"
    assert ids_path(tmp_path / "emb.b.npy") != ids_path(tmp_path / "emb.a.npy")


def test_nothing_the_run_did_not_write_is_replaced(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    spec = open_spec(str(data), "auto", "text", "uid")
    run_dir = tmp_path / "runs" / "x"
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder, and output.format=jsonl writes a file"):
        check_output(Output(folder, "jsonl"), spec, run_dir)  # IsADirectoryError at the end
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="a non-empty folder that this run did not write"):
        check_output(Output(folder, "hf_dataset"), spec, run_dir)
    existing = tmp_path / "emb.ids.jsonl"
    existing.write_text("{}\n")
    with pytest.raises(OutputError, match="emb.ids.jsonl, written beside output.path,"):
        check_output(Output(tmp_path / "emb.npy", "npy"), spec, run_dir)
    record_written(run_dir, Output(tmp_path / "emb.npy", "npy"))  # this run wrote them once
    check_output(Output(tmp_path / "emb.npy", "npy"), spec, run_dir)
    check_output(Output(run_dir / "output.jsonl", "jsonl"), spec, run_dir)


def test_a_folder_output_never_deletes_what_it_did_not_write(tmp_path, bert_embedder):
    folder = tmp_path / "dD"
    folder.mkdir()
    data = write_jsonl(folder / "input.jsonl", TEXTS)
    (folder / "notes.txt").write_text("my notes")
    args = [f"model.path={bert_embedder}", f"data.path={data}", "output.format=hf_dataset"]
    # in this process: what is refused does not depend on the world size, and the refusal is a
    # UserError (exit 2 from the entry point: tests/test_job_safety.py)
    with pytest.raises(UserError, match="a non-empty folder that this run did not write"):
        run_in_process([*args, f"output.path={folder}"], tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["input.jsonl", "notes.txt"]
    # A folder of its own: written, and replaced by the same run later.
    out = tmp_path / "embeddings"
    run_in_process([*args, f"output.path={out}"], tmp_path)
    run_in_process([*args, f"output.path={out}", "run.fresh=true"], tmp_path)
    assert (out / "state.json").is_file()


def test_npy_ids_files_never_collide_and_are_never_read_back_as_inputs(tmp_path, bert_embedder):
    out = tmp_path / "out"
    base = [f"model.path={bert_embedder}", "data.id_field=uid"]
    for name, texts in (("a", TEXTS[:5]), ("b", TEXTS[5:])):
        data = write_jsonl(tmp_path / f"{name}.jsonl", texts, id_prefix=name)
        run_in_process([*base, f"data.path={data}", f"output.path={out}/emb.{name}.npy"], tmp_path)
    for name, count in (("a", 5), ("b", len(TEXTS) - 5)):
        ids = [r["id"] for r in read_jsonl(out / f"emb.{name}.ids.jsonl")]
        assert ids == [f"{name}-{i}" for i in range(count)]
        assert np.load(out / f"emb.{name}.npy").shape == (count, 32)
    # The ids file would land inside data.path's pattern: refused before any work.
    (tmp_path / "gl").mkdir()
    write_jsonl(tmp_path / "gl" / "part-0.jsonl", TEXTS)
    glob = [*base, "data.path=gl/*.jsonl", "output.path=gl/emb.npy"]
    with pytest.raises(UserError, match=r"gl/emb\.ids\.jsonl, written by this run, matches "
                       r"data\.path=gl/\*\.jsonl"):  # fmt: skip
        run_in_process(glob, tmp_path)
    assert not (tmp_path / "gl" / "emb.npy").exists()
    assert json.loads((tmp_path / "gl" / "part-0.jsonl").read_text().splitlines()[0])["uid"]
