import json

import pyarrow.parquet as pq
import pytest

from ddpinfer.merge import MergeError, merge_parts
from ddpinfer.parts import finished_units, part_path, write_part


def write_units(run_dir, units, skip=(), tweak=None):
    for i, unit in enumerate(units):
        if i in skip:
            continue
        records = [{"row": r, "id": f"id{r}", "value": r * 10} for r in unit]
        write_part(run_dir, i, tweak(i, records) if tweak else records)


def test_merge_writes_every_row_once_in_order(tmp_path):
    units = [range(0, 3), range(3, 5)]
    write_units(tmp_path, units)
    assert finished_units(tmp_path) == {0, 1}
    out = tmp_path / "out.jsonl"
    assert merge_parts(tmp_path, units, out, "jsonl").written == 5
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [{"id": f"id{r}", "value": r * 10} for r in range(5)]


def test_merge_to_parquet(tmp_path):
    units = [range(0, 3), range(3, 5)]
    write_units(tmp_path, units)
    merge_parts(tmp_path, units, tmp_path / "out.parquet", "parquet")
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [
        f"id{r}" for r in range(5)
    ]


def test_missing_unit_is_named_and_no_output_is_left(tmp_path):
    units = [range(0, 3), range(3, 5)]
    write_units(tmp_path, units, skip={1})
    out = tmp_path / "out.jsonl"
    with pytest.raises(MergeError, match=r"unit 1 \(rows 3-4\)"):
        merge_parts(tmp_path, units, out, "jsonl")
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp*"))


def test_duplicate_row_is_named(tmp_path):
    units = [range(0, 3)]
    write_units(tmp_path, units, tweak=lambda i, recs: recs + [recs[1]])
    with pytest.raises(MergeError, match=r"duplicated ids \['id1'\]") as e:
        merge_parts(tmp_path, units, tmp_path / "out.jsonl", "jsonl")
    assert str(part_path(tmp_path, 0)) in str(e.value)


def test_error_records_go_to_the_errors_file_not_the_output(tmp_path):
    units = [range(0, 3)]
    write_part(
        tmp_path,
        0,
        [
            {"row": 0, "id": "a", "value": 1},
            {"row": 1, "id": "b", "error": "bad"},
            {"row": 2, "id": "c", "value": 3},
        ],
    )
    summary = merge_parts(tmp_path, units, tmp_path / "out.jsonl", "jsonl")
    assert (summary.written, summary.errors) == (2, 1)
    assert [json.loads(x)["id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "a",
        "c",
    ]
    assert json.loads(summary.errors_path.read_text()) == {"row": 1, "id": "b", "error": "bad"}
