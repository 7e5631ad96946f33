"""Inputs of many files through the real entry point: a sharded save_to_disk folder, one split of
a DatasetDict and a glob of JSONL files each give what the one file gives (2 ranks under
torchrun where it matters), with output.keep_fields in JSON Lines and Parquet."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import (
    TEXTS,
    launch,
    read_jsonl,
    run_in_process,
    save_dataset,
    split_jsonl,
    write_records,
)

from ddpinfer.errors import UserError

pytestmark = pytest.mark.slow

RECORDS = [
    {"uid": f"doc-{i}", "text": t, "lang": ["en", "de", "fr"][i % 3], "tags": [i, i % 2]}
    for i, t in enumerate(TEXTS)
]
KEEP = "output.keep_fields=[lang,tags]"


def run(tmp_path, name, data, *extra, nproc=None):
    """Under torchrun with ``nproc`` ranks, else in this process (results are the same: a
    one-process run needs no process of its own)."""
    out = tmp_path / name
    args = [
        f"model.path={extra[0]}",
        f"data.path={data}",
        "data.id_field=uid",
        f"output.path={out}",
        f"run.root={tmp_path / 'runs'}",
        "data.unit_size=3",  # 11 rows in 4 units that straddle the files (4, 4, 3 rows)
        "batch_size=4",
        *extra[1:],
    ]
    if nproc is None:
        return run_in_process(args, cwd=tmp_path), out
    return launch(args, nproc=nproc, cwd=tmp_path), out


def assert_same(records, reference):
    assert [{k: r[k] for k in ("id", "lang", "tags")} for r in records] == [
        {k: r[k] for k in ("id", "lang", "tags")} for r in reference
    ]
    np.testing.assert_allclose(
        [r["embedding"] for r in records], [r["embedding"] for r in reference], atol=1e-5
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bert_embedder):
    """The one-file run: in.jsonl, one process."""
    tmp_path = tmp_path_factory.mktemp("one-file")
    write_records(tmp_path / "in.jsonl", RECORDS)
    _, out = run(tmp_path, "one.jsonl", tmp_path / "in.jsonl", bert_embedder, KEEP)
    records = read_jsonl(out)
    assert list(records[0]) == ["id", "lang", "tags", "embedding"]
    assert [r["id"] for r in records] == [r["uid"] for r in RECORDS]
    assert [(r["lang"], r["tags"]) for r in records] == [(r["lang"], r["tags"]) for r in RECORDS]
    return records


def test_sharded_save_to_disk_folder_on_two_ranks_equals_one_file(
    tmp_path, bert_embedder, reference
):
    folder = save_dataset(tmp_path / "ds", RECORDS, num_shards=3)
    result, out = run(tmp_path, "ds.jsonl", folder, bert_embedder, KEEP, nproc=2)
    assert result.returncode == 0, result.stderr
    assert_same(read_jsonl(out), reference)


def test_dataset_dict_split_equals_one_file(tmp_path, bert_embedder, reference):
    folder = save_dataset(tmp_path / "dd", RECORDS, split="train")
    with pytest.raises(UserError, match="HINT: choose one: data.split=other"):  # exit code 2
        run(tmp_path, "dd.jsonl", folder, bert_embedder, KEEP)
    _, out = run(tmp_path, "dd.jsonl", folder, bert_embedder, KEEP, "data.split=train")
    assert_same(read_jsonl(out), reference)


def test_glob_of_three_jsonl_files_on_two_ranks_equals_one_file_in_parquet(
    tmp_path, bert_embedder, reference
):
    split_jsonl(write_records(tmp_path / "in.jsonl", RECORDS), 3)
    (tmp_path / "in.jsonl").unlink()
    pattern = tmp_path / "in-*.jsonl"
    result, out = run(tmp_path, "glob.parquet", pattern, bert_embedder, KEEP, nproc=2)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "lang", "tags", "embedding"]
    assert_same(table.to_pylist(), reference)


def test_a_bad_record_in_the_second_file_of_a_glob_is_named_by_file_and_line(
    tmp_path, bert_embedder
):
    files = split_jsonl(write_records(tmp_path / "in.jsonl", RECORDS), 3)
    (tmp_path / "in.jsonl").unlink()
    lines = files[1].read_text().splitlines(keepends=True)
    lines[2] = '{"uid": "broken", "body": "no text"}\n'
    files[1].write_text("".join(lines))
    with pytest.raises(UserError) as error:  # exit code 2
        run(tmp_path, "bad.jsonl", tmp_path / "in-*.jsonl", bert_embedder)
    assert f"{files[1]}:3: no field 'text'" in str(error.value)
