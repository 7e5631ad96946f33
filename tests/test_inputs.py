import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddpinfer.inputs import InputError, open_spec, read_rows, scan


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


def test_plain_text_one_input_per_line(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("first line\r\n\nsecond line\n")
    spec = open_spec(str(p), "auto", "text", None)
    assert rows(spec) == [(0, 0, "first line"), (1, 1, "second line")]


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
