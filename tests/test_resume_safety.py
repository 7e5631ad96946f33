"""A resume never mixes runs (issue 8, cases 1-3 and 6): edited inputs, new weights in the same
model folder, a run directory without a fingerprint, all-bad inputs under data.on_error=skip, an
output that would overwrite its input. One process, the real run path."""

import json
import shutil

import numpy as np
import pytest
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, split_jsonl, write_jsonl

from ddpinfer.errors import UserError
from ddpinfer.inputs.bad_records import TooManyBadInputs, max_bad_rows
from ddpinfer.inputs.readers import InputSpec
from ddpinfer.inputs.scan import InputScan, scan
from ddpinfer.plan import fingerprint
from ddpinfer.plan.fingerprint import FingerprintMismatch

N = 12


def args(tmp_path, model, *extra):
    return [
        f"model.path={model}",
        f"data.path={tmp_path / 'in.jsonl'}",
        "data.id_field=uid",
        "data.unit_size=4",
        f"output.path={tmp_path / 'out.jsonl'}",
        f"run.dir={tmp_path / 'run'}",
        *extra,
    ]


def texts():
    return [f"{TEXTS[i % len(TEXTS)]} #{i:02d}" for i in range(N)]


def rank0_log(tmp_path):
    return (tmp_path / "run" / "logs" / "rank0.log").read_text()


def test_an_edited_record_is_recomputed_and_only_its_unit(tmp_path, bert_embedder):
    edited = texts()
    write_jsonl(tmp_path / "in.jsonl", edited)
    run_in_process(args(tmp_path, bert_embedder))
    before = read_jsonl(tmp_path / "out.jsonl")
    # One record in the middle replaced by text of the same length: size, first and last MiB
    # of the file are unchanged, which fooled the old fingerprint.
    edited[5] = "z" * len(edited[5])
    write_jsonl(tmp_path / "in.jsonl", edited)
    run_in_process(args(tmp_path, bert_embedder))
    log = rank0_log(tmp_path)
    assert "recomputing them: unit(s) 1" in log
    assert "resuming: 2 of 3 work unit(s) already done" in log
    after = read_jsonl(tmp_path / "out.jsonl")
    # The reference: the edited file run from scratch in another directory.
    run_in_process(
        [
            *args(tmp_path, bert_embedder),
            f"output.path={tmp_path / 'ref.jsonl'}",
            f"run.dir={tmp_path / 'ref'}",
        ]
    )
    reference = read_jsonl(tmp_path / "ref.jsonl")
    np.testing.assert_allclose(after[5]["embedding"], reference[5]["embedding"], atol=1e-6)
    assert not np.allclose(after[5]["embedding"], before[5]["embedding"], atol=1e-3)
    assert after[0] == before[0] and after[11] == before[11]  # other units kept


def test_another_unit_size_is_refused(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, bert_embedder))
    with pytest.raises(FingerprintMismatch, match=r"unit_size: 4 -> 5.*HINT: run.fresh=true"):
        run_in_process(args(tmp_path, bert_embedder, "data.unit_size=5"))


def other_weights(tmp_path, model):
    """The same architecture and config with other weights (a newer checkpoint)."""
    import torch
    from transformers import BertModel

    net = BertModel.from_pretrained(model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    net.save_pretrained(tmp_path / "other")
    return tmp_path / "other" / "model.safetensors"


def test_new_weights_in_the_same_folder_are_refused(tmp_path, bert_embedder):
    model = tmp_path / "model"
    shutil.copytree(bert_embedder, model)
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, model))
    new = other_weights(tmp_path, model)
    assert (model / "config.json").read_text() == (new.parent / "config.json").read_text()
    shutil.copy(new, model / "model.safetensors")
    with pytest.raises(FingerprintMismatch, match=r"model.files.model.safetensors: '"):
        run_in_process(args(tmp_path, model))


def test_tokenizer_files_are_part_of_the_model(tmp_path, bert_embedder):
    model = tmp_path / "model"
    shutil.copytree(bert_embedder, model)
    before = fingerprint.model_files(str(model))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(before)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["model_max_length"] = 7
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert (
        fingerprint.model_files(str(model))["tokenizer_config.json"]
        != before["tokenizer_config.json"]
    )


def test_large_weight_files_are_sampled_not_read_whole(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}})
    head = len(header).to_bytes(8, "little") + header.encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(head + bytes(4 << 20))
    first = fingerprint.file_digest(path)
    path.write_bytes(head + b"\x01" * (4 << 20))  # other weights: every chunk differs
    assert fingerprint.file_digest(path) != first
    # What the digest reads: the header and 16 chunks of 64 KiB, not the whole file (so a
    # change between the samples goes unnoticed; real new weights change every chunk).
    body = bytearray(4 << 20)
    body[(4 << 20) // 32] = 1
    path.write_bytes(head + body)
    assert fingerprint.file_digest(path) == first


def test_parts_without_a_fingerprint_are_refused(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, bert_embedder))
    (tmp_path / "run" / "fingerprint.json").unlink()
    with pytest.raises(FingerprintMismatch, match=r"3 part file\(s\)\) but no fingerprint.json"):
        run_in_process(args(tmp_path, bert_embedder))


def test_digests_of_an_earlier_scheme_are_refused(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, bert_embedder))
    stored = tmp_path / "run" / "fingerprint.json"
    old = json.loads(stored.read_text())
    del old["inputs"]["digest_scheme"]  # as ddpinfer wrote it before the scheme changed
    stored.write_text(json.dumps(old))
    with pytest.raises(FingerprintMismatch, match="made by an earlier version of ddpinfer"):
        run_in_process(args(tmp_path, bert_embedder))


def test_unit_digests_follow_the_blocks_they_cover(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", texts())
    spec = InputSpec(str(path), (path,), "jsonl", id_field="uid")
    # Units of 6 over blocks of 4: the block of rows 4-7 belongs to both units.
    a = fingerprint.unit_digests(scan(spec, 4), 6)
    edited = texts()
    edited[5] = "edited"
    write_jsonl(path, edited)
    b = fingerprint.unit_digests(scan(spec, 4), 6)
    assert len(a) == len(b) == 2 and a[0] != b[0] and a[1] != b[1]
    edited[10] = "edited too"
    write_jsonl(path, edited)
    c = fingerprint.unit_digests(scan(spec, 4), 6)
    assert c[0] == b[0] and c[1] != b[1]
    assert scan(spec, 4).digest == scan(spec, 256).digest  # the file digest has no block size


def test_every_record_bad_under_skip_is_refused_naming_the_reason(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", texts())
    extra = ["data.on_error=skip", "data.text_field=txt", "data.max_bad=100"]
    with pytest.raises(TooManyBadInputs) as error:
        run_in_process(args(tmp_path, bert_embedder, *extra))
    message = str(error.value)
    assert "every one of its 12 input record(s) is bad" in message
    assert "Most common problem: no field 'txt' (12 record(s))" in message
    assert "a run whose every record is bad always stops" in message  # not: raise max_bad
    assert "raise data.max_bad" not in message
    assert not (tmp_path / "out.jsonl").exists()


def test_more_bad_records_than_max_bad_are_refused(tmp_path, bert_embedder):
    rows = texts()
    rows[3] = rows[7] = rows[9] = " "
    write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(TooManyBadInputs, match=r"3 of its 12 .* allows \(2, 10 %\).*text is empty"):
        run_in_process(args(tmp_path, bert_embedder, "data.on_error=skip"))
    run_in_process(args(tmp_path, bert_embedder, "data.on_error=skip", "data.max_bad=0.25"))
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 9


def test_max_bad_is_a_fraction_below_one_else_a_count():
    assert max_bad_rows(None, 1000) == 100
    assert max_bad_rows(None, 5) == 1 and max_bad_rows(0.07, 100) == 7  # rounded up
    assert max_bad_rows(0.02, 1000) == 20
    assert max_bad_rows(5, 1000) == 5 and max_bad_rows(1, 10) == 1
    assert max_bad_rows(0, 1000) == 0
    assert InputScan(3, 0, {}).bad_rows == 0


def test_output_that_is_the_input_is_refused(tmp_path, bert_embedder):
    path = write_jsonl(tmp_path / "in.jsonl", texts())
    before = path.read_bytes()
    overrides = args(tmp_path, bert_embedder)
    overrides[4] = f"output.path={tmp_path / '.' / 'in.jsonl'}"
    with pytest.raises(UserError, match=r"is the input file data.path=.*HINT: choose another"):
        run_in_process(overrides)
    (tmp_path / "link.jsonl").symlink_to(path)
    overrides[4] = f"output.path={tmp_path / 'link.jsonl'}"
    with pytest.raises(UserError, match=r"is the input file"):
        run_in_process(overrides)
    assert path.read_bytes() == before


def test_a_glob_with_an_edited_shard_recomputes_its_unit_and_other_keep_fields_are_refused(
    tmp_path, bert_embedder
):
    shards = split_jsonl(write_jsonl(tmp_path / "all.jsonl", texts()), 3)  # 4 rows each
    overrides = [*args(tmp_path, bert_embedder, "output.keep_fields=[uid]")]
    overrides[1] = f"data.path={tmp_path / 'all-*.jsonl'}"
    run_in_process(overrides)
    assert read_jsonl(tmp_path / "out.jsonl")[4]["uid"] == "doc-4"
    shards[1].write_text(shards[1].read_text().replace('"uid": "doc-5"', '"uid": "doc-5b"'))
    run_in_process(overrides)
    assert "recomputing them: unit(s) 1" in rank0_log(tmp_path)
    assert read_jsonl(tmp_path / "out.jsonl")[5]["uid"] == "doc-5b"
    with pytest.raises(FingerprintMismatch, match=r"output: \{'keep_fields': \['uid'\]\} -> None"):
        run_in_process(overrides[:-1])


@pytest.mark.slow
def test_a_repeat_made_or_mended_by_an_edit_elsewhere_is_recomputed(tmp_path, bert_embedder):
    data = write_jsonl(tmp_path / "in.jsonl", texts())
    original = data.read_text()
    skip = args(tmp_path, bert_embedder, "data.on_error=skip", "data.max_bad=2")
    run_in_process(skip)
    # Row 1 takes row 9's id: row 9 (unit 2, its own record unchanged) is now the repeat.
    records = [json.loads(line) for line in original.splitlines()]
    records[1]["uid"] = "doc-9"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    check(launch(skip, nproc=2, cwd=tmp_path))
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == ["doc-0", "doc-9", *(f"doc-{i}" for i in range(2, 12) if i != 9)]
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [(e["row"], e["id"]) for e in errors] == [(9, "doc-9")]
    assert "duplicate id 'doc-9' (row 9), first at row 1" in errors[0]["error"]
    # Mended: row 9 is no repeat any more, and runs.
    data.write_text(original)
    run_in_process(skip)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [f"doc-{i}" for i in range(12)]
    assert read_jsonl(tmp_path / "run" / "errors.jsonl") == []


def test_a_part_cut_short_is_recomputed_and_dead_writers_temporaries_are_swept(
    tmp_path, bert_embedder
):
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, bert_embedder))
    reference = read_jsonl(tmp_path / "out.jsonl")
    part = tmp_path / "run" / "parts" / "0000" / "unit-000001.arrow"
    part.write_bytes(part.read_bytes()[:200])  # a disk that filled, a copy cut short
    leftovers = [
        tmp_path / "run" / "parts" / "0000" / f".unit-000002.arrow.tmp-{'a' * 32}",
        tmp_path / f".out.jsonl.tmp-{'b' * 32}",  # beside output.path
    ]
    for path in leftovers:
        path.write_text("left by a writer that died")
    run_in_process(args(tmp_path, bert_embedder))
    assert "recomputing those rows: unit(s) 1" in rank0_log(tmp_path)
    assert read_jsonl(tmp_path / "out.jsonl") == reference
    assert not any(p.exists() for p in leftovers)
