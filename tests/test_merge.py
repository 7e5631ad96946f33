import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddpinfer.plan import ids_path
from ddpinfer.results.merge import MergeError, merge_parts
from ddpinfer.rundir.parts import build_table, finished_units, part_path, read_part, write_part


def write_units(run_dir, units, skip=(), ids=lambda r: f"id{r}", errors=()):
    for i, unit in enumerate(units):
        if i in skip:
            continue
        good = [r for r in unit if r not in errors]
        bad = [{"row": r, "id": ids(r), "error": "bad"} for r in unit if r in errors]
        columns = {"value": np.array([r * 10 for r in good], np.float32)}
        write_part(run_dir, i, build_table(good, [ids(r) for r in good], columns, bad))


def read_lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_merge_writes_every_row_once_in_order(tmp_path):
    units = [range(0, 3), range(3, 5)]
    write_units(tmp_path, units)
    assert finished_units(tmp_path) == {0, 1}
    out = tmp_path / "out.jsonl"
    assert merge_parts(tmp_path, units, out, "jsonl").written == 5
    assert read_lines(out) == [{"id": f"id{r}", "value": r * 10} for r in range(5)]


def test_parts_are_binary_float32_columns(tmp_path):
    embeddings = np.random.default_rng(0).random((4, 8), dtype=np.float32)
    write_part(tmp_path, 0, build_table(range(4), list(range(4)), {"embedding": embeddings}, []))
    table, errors = read_part(part_path(tmp_path, 0))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert table.schema.field("id").type == pa.int64() and errors == []
    stored = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(4, 8)
    np.testing.assert_array_equal(stored, embeddings)


def test_jsonl_writes_float32_in_shortest_form(tmp_path):
    values = np.array([[0.1, 1 / 3]], np.float32)
    write_part(tmp_path, 0, build_table([0], [0], {"embedding": values}, []))
    merge_parts(tmp_path, [range(1)], tmp_path / "out.jsonl", "jsonl")
    assert (tmp_path / "out.jsonl").read_text() == '{"id":0,"embedding":[0.1,0.33333334]}\n'


def test_merge_to_parquet_keeps_float32_lists(tmp_path):
    units = [range(0, 3), range(3, 5)]
    rng = np.random.default_rng(0)
    for i, unit in enumerate(units):
        emb = rng.random((len(unit), 16), dtype=np.float32)
        write_part(tmp_path, i, build_table(unit, [f"id{r}" for r in unit], {"embedding": emb}, []))
    merge_parts(tmp_path, units, tmp_path / "out.parquet", "parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == [f"id{r}" for r in range(5)]
    assert table.schema.field("embedding").type.value_type == pa.float32()


def test_mixed_id_types_keep_their_type_in_jsonl_and_become_strings_in_parquet(tmp_path):
    units = [range(0, 2), range(2, 4)]
    ids = {0: 7, 1: "b", 2: 9, 3: 10}.__getitem__  # unit 0 mixed, unit 1 all integers
    write_units(tmp_path, units, ids=ids)
    merge_parts(tmp_path, units, tmp_path / "out.jsonl", "jsonl")
    assert [r["id"] for r in read_lines(tmp_path / "out.jsonl")] == [7, "b", 9, 10]
    merge_parts(tmp_path, units, tmp_path / "out.parquet", "parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["7", "b", "9", "10"]


def test_npy_output_is_one_matrix_in_input_order_with_ids_beside_it(tmp_path):
    units = [range(0, 3), range(3, 6)]
    rng = np.random.default_rng(1)
    expected = rng.random((6, 4), dtype=np.float32)
    for i, unit in enumerate(units):
        good = [r for r in unit if r != 4]
        errors = [{"row": 4, "id": "d4", "error": "bad"}] if 4 in unit else []
        table = build_table(good, [f"d{r}" for r in good], {"embedding": expected[good]}, errors)
        write_part(tmp_path, i, table)
    out = tmp_path / "emb.npy"
    summary = merge_parts(tmp_path, units, out, "npy")
    assert (summary.written, summary.errors) == (5, 1)
    np.testing.assert_array_equal(np.load(out), expected[[0, 1, 2, 3, 5]])
    assert ids_path(out).name == "emb.ids.jsonl"
    assert [r["id"] for r in read_lines(ids_path(out))] == ["d0", "d1", "d2", "d3", "d5"]


def test_missing_unit_is_named_and_no_output_is_left(tmp_path):
    units = [range(0, 3), range(3, 5)]
    write_units(tmp_path, units, skip={1})
    out = tmp_path / "out.jsonl"
    with pytest.raises(MergeError, match=r"unit 1 \(rows 3-4\)"):
        merge_parts(tmp_path, units, out, "jsonl")
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_duplicate_row_is_named(tmp_path):
    write_part(tmp_path, 0, build_table([0, 1, 1], ["a", "b", "b"], {"v": [1, 2, 2]}, []))
    with pytest.raises(MergeError, match=r"duplicated ids \['b'\]") as e:
        merge_parts(tmp_path, [range(0, 3)], tmp_path / "out.jsonl", "jsonl")
    assert str(part_path(tmp_path, 0)) in str(e.value) and "missing rows [2]" in str(e.value)


def test_error_records_go_to_the_errors_file_not_the_output(tmp_path):
    write_units(tmp_path, [range(0, 3)], ids="abc".__getitem__, errors={1})
    summary = merge_parts(tmp_path, [range(0, 3)], tmp_path / "out.jsonl", "jsonl")
    assert (summary.written, summary.errors) == (2, 1)
    assert [r["id"] for r in read_lines(tmp_path / "out.jsonl")] == ["a", "c"]
    assert json.loads(summary.errors_path.read_text()) == {"row": 1, "id": "b", "error": "bad"}


def test_a_unit_whose_every_input_failed_merges_like_any_other(tmp_path):
    write_units(tmp_path, [range(0, 2), range(2, 4)], errors={2, 3})
    summary = merge_parts(tmp_path, [range(0, 2), range(2, 4)], tmp_path / "o.parquet", "parquet")
    assert (summary.written, summary.errors) == (2, 2)
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 2


def test_hf_dataset_folder_loads_with_datasets_and_is_replaced_on_rerun(tmp_path):
    datasets = pytest.importorskip("datasets")
    units = [range(0, 3), range(3, 5)]
    embeddings = np.arange(10, dtype=np.float32).reshape(5, 2)
    for i, unit in enumerate(units):
        good = [r for r in unit if r != 4]
        bad = [{"row": 4, "id": 4, "error": "bad"}] if 4 in unit else []
        columns = {"embedding": embeddings[good], "label": [f"l{r}" for r in good]}
        write_part(tmp_path, i, build_table(good, good, columns, bad))
    out = tmp_path / "out"
    for _ in range(2):  # a second merge replaces the folder
        summary = merge_parts(tmp_path, units, out, "hf_dataset")
    assert (summary.written, summary.errors) == (4, 1)
    dataset = datasets.load_from_disk(str(out))
    assert dataset["id"] == [0, 1, 2, 3] and dataset["label"] == ["l0", "l1", "l2", "l3"]
    np.testing.assert_array_equal(np.array(dataset["embedding"]), embeddings[:4])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


KEPT = [  # per row: a string, a field typed in one part and not the other, and mixed values
    {"lang": "en", "n": 1, "meta": {"a": 1}},
    {"lang": "de", "n": 2, "meta": [1, "x"]},
    {"lang": None, "n": "three", "meta": {"b": None}},
    {"lang": None, "n": "four", "meta": "text"},
]


def write_kept_units(run_dir):
    """Rows 0-1 in unit 0, rows 2-4 in unit 1 (row 4 failed); kept fields as in KEPT."""
    units = [range(0, 2), range(2, 5)]
    for i, unit in enumerate(units):
        good = [r for r in unit if r != 4]
        kept = {k: [KEPT[r][k] for r in good] for k in ("lang", "n", "meta")}
        columns = {"embedding": np.ones((len(good), 2), np.float32) * np.array(good)[:, None]}
        bad = [{"row": 4, "id": "id4", "error": "bad"}] if i else []
        table = build_table(good, [f"id{r}" for r in good], columns, bad, kept)
        write_part(run_dir, i, table)
    return units


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf_dataset", "npy"])
def test_kept_input_fields_come_after_the_id_as_they_were(tmp_path, fmt):
    units = write_kept_units(tmp_path)
    out = tmp_path / ("out" if fmt == "hf_dataset" else f"out.{fmt}")
    assert merge_parts(tmp_path, units, out, fmt).written == 4
    expected = [{"id": f"id{r}", **KEPT[r]} for r in range(4)]
    if fmt == "jsonl":
        records = read_lines(out)
        assert [list(r) for r in records] == [["id", "lang", "n", "meta", "embedding"]] * 4
        assert [{k: r[k] for k in ("id", "lang", "n", "meta")} for r in records] == expected
        return
    if fmt == "npy":
        assert read_lines(ids_path(out)) == expected
        return
    if fmt == "parquet":
        table = pq.read_table(out)
    else:
        from datasets import load_from_disk

        table = load_from_disk(str(out)).data.table
    assert table.column_names == ["id", "lang", "n", "meta", "embedding"]
    assert table.column("lang").to_pylist() == ["en", "de", None, None]
    # typed differently in two parts, or of mixed types: JSON text, one value per row
    assert [json.loads(v) for v in table.column("n").to_pylist()] == [1, 2, "three", "four"]
    assert [json.loads(v) for v in table.column("meta").to_pylist()] == [r["meta"] for r in KEPT]
