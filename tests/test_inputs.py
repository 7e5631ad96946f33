import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import save_dataset, write_records

from ddpinfer.inputs.readers import InputError, open_spec, read_rows
from ddpinfer.inputs.scan import scan


def rows(spec, r=None):
    return [(x.index, x.id, x.text) for x in read_rows(spec, r)]


def test_jsonl_skips_blank_lines_and_uses_row_index_as_id(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b", "other": 1}\n')
    spec = open_spec(str(p), "auto", "text", None)
    assert scan(spec).num_rows == 2
    assert rows(spec) == [(0, 0, "a"), (1, 1, "b")]


def test_jsonl_id_field_and_subrange(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"k": f"id{i}", "body": f"t{i}"}) + "\n" for i in range(10)))
    spec = open_spec(str(p), "auto", "body", "k")
    assert rows(spec, range(3, 5)) == [(3, "id3", "t3"), (4, "id4", "t4")]


def test_csv_with_quoted_newlines(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('id,review\n7,"good, really"\n8,"two\nlines"\n')
    spec = open_spec(str(p), "auto", "review", "id")
    assert rows(spec) == [(0, "7", "good, really"), (1, "8", "two\nlines")]


def test_parquet_reads_only_the_asked_rows(tmp_path):
    p = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"text": [f"t{i}" for i in range(10000)], "n": list(range(10000))}),
        p,
        row_group_size=1000,
    )
    spec = open_spec(str(p), "auto", "text", "n")
    assert scan(spec).num_rows == 10000
    assert rows(spec, range(4998, 5001)) == [
        (4998, 4998, "t4998"),
        (4999, 4999, "t4999"),
        (5000, 5000, "t5000"),
    ]


def test_plain_text_one_input_per_line_with_line_numbers_as_ids(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"\xef\xbb\xbffirst line\r\n\r\n  \r\nsecond line\r\nthird\r\n\r\n")
    spec = open_spec(str(p), "auto", "text", None)
    # blank lines are no inputs, and the ids stay the lines' numbers (from 0)
    assert rows(spec) == [(0, 0, "first line"), (1, 3, "second line"), (2, 4, "third")]
    assert scan(spec).blank_lines == 2
    q = tmp_path / "more.txt"
    q.write_text("fourth\n")
    both = open_spec(str(tmp_path / "*.txt"), "auto", "text", None)
    assert rows(both)[-1] == (3, 6, "fourth")  # lines count on across the files


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": broken}\n', r"in.jsonl:2: malformed JSON"),
        ('{"body": "x", "n": 1}\n', r"in.jsonl:1: no field 'text'; fields present: body, n"),
        ('{"text": null}\n', r"in.jsonl:1: field 'text' is null, expected a string"),
        ('{"text": 3}\n', r"field 'text' is int"),
        ('["text"]\n', r"expected a JSON object, got list"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, content, message):
    p = tmp_path / "in.jsonl"
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        rows(open_spec(str(p), "auto", "text", None))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_spec(str(tmp_path / "nope.jsonl"), "auto", "text", None)
    (tmp_path / "x.dat").write_text("a\n")
    with pytest.raises(InputError, match="data.format"):
        open_spec(str(tmp_path / "x.dat"), "auto", "text", None)
    assert open_spec(str(tmp_path / "x.dat"), "text", "text", None).format == "text"


def test_row_stream_reads_ascending_windows_in_one_pass(tmp_path):
    from ddpinfer.inputs import RowStream

    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)))
    stream = RowStream(open_spec(str(p), "auto", "text", None))
    assert [r.index for r in stream.read(range(2, 5))] == [2, 3, 4]
    assert [r.index for r in stream.read(range(5, 6))] == [5]
    assert [r.text for r in stream.read(range(9, 12))] == ["t9", "t10", "t11"]
    assert [r.index for r in stream.read(range(18, 25))] == [18, 19]
    assert [r.index for r in stream.read(range(0, 2))] == [0, 1]  # backwards: starts over


RECORDS = [{"uid": f"u{i}", "text": f"t{i}", "lang": ["en", "de"][i % 2]} for i in range(10)]


def records_read(spec, r=None):
    return [(x.index, x.id, x.text, x.at.split("/")[-1]) for x in read_rows(spec, r)]


def test_save_to_disk_folder_reads_its_shards_in_order_and_skips_to_a_row(tmp_path):
    folder = save_dataset(tmp_path / "ds", RECORDS, num_shards=3)
    spec = open_spec(str(folder), "auto", "text", "uid")
    assert spec.format == "hf_dataset"
    assert [f.name for f in spec.files] == [f"data-0000{k}-of-00003.arrow" for k in range(3)]
    assert scan(spec).num_rows == 10
    assert [(i, t) for i, _, t, _ in records_read(spec)] == [(i, f"t{i}") for i in range(10)]
    # rows count on across shards (4, 3, 3 rows); a record is named by its file and row in it
    assert records_read(spec, range(3, 5)) == [
        (3, "u3", "t3", "data-00000-of-00003.arrow (row 3)"),
        (4, "u4", "t4", "data-00001-of-00003.arrow (row 0)"),
    ]
    assert open_spec(str(folder), "hf_dataset", "text", "uid").files == spec.files


def test_dataset_dict_needs_data_split_when_it_has_several(tmp_path):
    folder = save_dataset(tmp_path / "dd", RECORDS, split="train")
    with pytest.raises(InputError, match=r"splits other, train\. HINT: .*data\.split=other"):
        open_spec(str(folder), "auto", "text", "uid")
    with pytest.raises(InputError, match=r"data.split=test is not a split of .*other, train"):
        open_spec(str(folder), "auto", "text", "uid", split="test")
    spec = open_spec(str(folder), "auto", "text", "uid", split="train")
    assert [r.id for r in read_rows(spec)] == [f"u{i}" for i in range(10)]
    only = save_dataset(tmp_path / "single", RECORDS[:3])
    with pytest.raises(InputError, match="leave data.split unset"):
        open_spec(str(only), "auto", "text", "uid", split="train")


def test_a_folder_that_is_not_a_dataset_is_refused_with_a_hint(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"not one written by save_to_disk.*HINT: .*/\*\.jsonl"):
        open_spec(str(tmp_path / "plain"), "auto", "text", None)
    with pytest.raises(InputError, match="data.format=hf_dataset needs a folder"):
        open_spec(str(tmp_path / "missing"), "hf_dataset", "text", None)


def write_shards(tmp_path, names=("b.jsonl", "c.jsonl", "a.jsonl")):
    """Three JSONL files holding RECORDS (a: 0-3, b: 4-6, c: 7-9), written out of order."""
    chunks = {"a.jsonl": RECORDS[:4], "b.jsonl": RECORDS[4:7], "c.jsonl": RECORDS[7:]}
    (tmp_path / "shards").mkdir(exist_ok=True)
    for name in names:
        write_records(tmp_path / "shards" / name, chunks[name])
    return str(tmp_path / "shards" / "*.jsonl")


def test_glob_reads_the_files_in_sorted_order_with_rows_counting_across(tmp_path):
    spec = open_spec(write_shards(tmp_path), "auto", "text", "uid")
    assert [f.name for f in spec.files] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert [(r.index, r.id) for r in read_rows(spec)] == [(i, f"u{i}") for i in range(10)]
    assert records_read(spec, range(3, 5)) == [
        (3, "u3", "t3", "a.jsonl:4"),
        (4, "u4", "t4", "b.jsonl:1"),
    ]


def test_glob_errors_name_the_file_and_its_line(tmp_path):
    pattern = write_shards(tmp_path)
    with open(tmp_path / "shards" / "b.jsonl", "a") as f:
        f.write('{"uid": "bad", "body": "no text"}\n')
    with pytest.raises(InputError, match=r"shards/b\.jsonl:4: no field 'text'"):
        scan(open_spec(pattern, "auto", "text", "uid"))
    with pytest.raises(InputError, match=r"no file matches this pattern.*HINT"):
        open_spec(str(tmp_path / "shards" / "*.csv"), "auto", "text", None)
    (tmp_path / "shards" / "d.txt").write_text("x\n")
    with pytest.raises(InputError, match=r"different formats: .*a\.jsonl is jsonl, .*d\.txt"):
        open_spec(str(tmp_path / "shards" / "*"), "auto", "text", None)


def test_parquet_glob_skips_whole_files_before_the_range(tmp_path, monkeypatch):
    import ddpinfer.inputs.readers as inputs_module

    for k in range(3):
        chunk = RECORDS[k * 4 : (k + 1) * 4]
        pq.write_table(pa.Table.from_pylist(chunk), tmp_path / f"p{k}.parquet")
    spec = open_spec(str(tmp_path / "p*.parquet"), "auto", "text", "uid")
    opened = []
    real = inputs_module._columnar_records
    monkeypatch.setattr(
        inputs_module,
        "_columnar_records",
        lambda spec, path, *skip: opened.append(path.name) or real(spec, path, *skip),
    )
    assert records_read(spec, range(9, 10)) == [(9, "u9", "t9", "p2.parquet (row 1)")]
    assert opened == ["p2.parquet"]  # p0 and p1 are passed over by their row counts


def test_keep_fields_are_read_and_a_missing_one_is_a_bad_record(tmp_path):
    p = write_records(tmp_path / "in.jsonl", [*RECORDS[:2], {"uid": "x", "text": "no lang"}])
    spec = open_spec(str(p), "auto", "text", "uid", keep=("lang",))
    with pytest.raises(InputError, match=r"in\.jsonl:3: no field 'lang'"):
        scan(spec)
    skipping = open_spec(str(p), "auto", "text", "uid", skip_bad=True, keep=("lang",))
    assert [r.fields for r in read_rows(skipping)][:2] == [{"lang": "en"}, {"lang": "de"}]
    assert scan(skipping).bad_rows == 1


def test_an_edited_shard_changes_the_digests_of_its_rows_only(tmp_path):
    pattern = write_shards(tmp_path)
    before = scan(open_spec(pattern, "auto", "text", "uid"), block_rows=2)
    lines = (tmp_path / "shards" / "c.jsonl").read_text().replace('"t8"', '"edited"')
    (tmp_path / "shards" / "c.jsonl").write_text(lines)
    after = scan(open_spec(pattern, "auto", "text", "uid"), block_rows=2)
    changed = [
        i for i, (a, b) in enumerate(zip(before.block_digests, after.block_digests)) if a != b
    ]
    assert changed == [4] and before.digest != after.digest  # rows 8-9
    kept = scan(open_spec(pattern, "auto", "text", "uid", keep=("lang",)), block_rows=2)
    assert kept.block_digests != after.block_digests  # kept fields reach the output: hashed


def test_output_is_refused_when_it_is_an_input_file_the_dataset_or_matches_the_glob(tmp_path):
    from ddpinfer.errors import UserError
    from ddpinfer.plan.fingerprint import _input_paths
    from ddpinfer.plan.outputs import _check_not_the_input

    spec = open_spec(write_shards(tmp_path), "auto", "text", "uid")
    for output in ("shards/b.jsonl", "shards/out.jsonl"):
        with pytest.raises(UserError, match=r"HINT: choose .*output\.path"):
            _check_not_the_input(tmp_path / output, spec)
    _check_not_the_input(tmp_path / "out.jsonl", spec)
    assert _input_paths(spec)["files"] == [str(f.resolve()) for f in spec.files]
    folder = save_dataset(tmp_path / "ds", RECORDS)
    with pytest.raises(UserError, match="would overwrite the inputs"):
        _check_not_the_input(folder, open_spec(str(folder), "auto", "text", "uid"))
