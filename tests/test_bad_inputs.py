"""Bad input records, each under data.on_error=fail (stop before any model work, naming file,
line and problem) and skip (recorded with id and reason in errors.jsonl; the run goes on)."""

import json
import re

import pytest
from helpers import read_jsonl, run_in_process

from ddpinfer.inputs.readers import InputError

GOOD_BEFORE = b'{"uid": "a", "text": "a fine first input"}\n'
GOOD_AFTER = b'{"uid": "z", "text": "a fine last input"}\n'

# (name, file suffix, bad record bytes, message under fail, id recorded under skip)
JSONL_CASES = [
    ("malformed json", b'{"uid": "b", "text": "oops"\n', r"in.jsonl:2: malformed JSON", None),
    ("not an object", b'["b", "text"]\n', r"in.jsonl:2: expected a JSON object, got list", None),
    (
        "missing text field",
        b'{"uid": "b", "body": "x"}\n',
        r"in.jsonl:2: no field 'text'; fields present: uid, body",
        "b",
    ),
    ("null text", b'{"uid": "b", "text": null}\n', r"in.jsonl:2: field 'text' is null", "b"),
    ("number text", b'{"uid": "b", "text": 42}\n', r"in.jsonl:2: field 'text' is int", "b"),
    ("empty text", b'{"uid": "b", "text": "   "}\n', r"in.jsonl:2: the text is empty", "b"),
    (
        "undecodable bytes",
        b'{"uid": "b", "text": "caf\xe9"}\n',
        r"in.jsonl:2: not valid UTF-8 \(byte 0xe9",
        None,
    ),
    ("missing id", b'{"text": "no id here"}\n', r"in.jsonl:2: no id field 'uid'", None),
    ("null id", b'{"uid": null, "text": "x"}\n', r"in.jsonl:2: id field 'uid' is None", None),
    ("float id", b'{"uid": 1.5, "text": "x"}\n', r"in.jsonl:2: id field 'uid' is 1.5", None),
    (
        "duplicate id",
        b'{"uid": "a", "text": "same id as row 0"}\n',
        r"in.jsonl:\d+: duplicate id 'a' \(row 1\), first at row 0",
        "a",
    ),
]
CSV_CASES = [
    ("csv extra cell", b'b,"x",surplus\n', r"in.csv:3: more cells than the header", "b"),
    ("csv missing cell", b"b\n", r"in.csv:3: fewer cells than the header; 'text' is missing", "b"),
]


def write_input(tmp_path, suffix, bad):
    path = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        path.write_bytes(b'uid,text\na,"a fine first input"\n' + bad + b'z,"a fine last input"\n')
    else:
        path.write_bytes(GOOD_BEFORE + bad + GOOD_AFTER)
    return path


def overrides(tmp_path, path, bert_embedder, on_error):
    return [
        f"model.path={bert_embedder}",
        f"data.path={path}",
        "data.id_field=uid",
        f"data.on_error={on_error}",
        "data.max_bad=1",  # one bad record of three: over the default 10 %
        f"output.path={tmp_path / 'out.jsonl'}",
        f"run.root={tmp_path / 'runs'}",
    ]


CASES = [(*c[:1], ".jsonl", *c[1:]) for c in JSONL_CASES] + [
    (*c[:1], ".csv", *c[1:]) for c in CSV_CASES
]

each_case = pytest.mark.parametrize(
    "name, suffix, bad, message, bad_id", CASES, ids=[c[0] for c in CASES]
)


@each_case
def test_fail_names_file_line_and_problem_before_any_model_work(
    tmp_path, bert_embedder, name, suffix, bad, message, bad_id
):
    path = write_input(tmp_path, suffix, bad)
    with pytest.raises(InputError, match=message) as error:
        run_in_process(overrides(tmp_path, path, bert_embedder, "fail"))
    # a missing field is a setting to fix: skipping would only mark every record bad
    skip_hint = "data.on_error=skip" in str(error.value)
    assert skip_hint != name.startswith("missing"), str(error.value)
    assert not (tmp_path / "out.jsonl").exists()
    assert not list(tmp_path.glob("runs/*/parts/*"))  # stopped before any unit ran


@each_case
def test_skip_records_the_bad_input_and_goes_on(
    tmp_path, bert_embedder, name, suffix, bad, message, bad_id
):
    path = write_input(tmp_path, suffix, bad)
    result = run_in_process(overrides(tmp_path, path, bert_embedder, "skip"))
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == ["a", "z"]
    errors = read_jsonl(result.run_dir / "errors.jsonl")
    assert len(errors) == 1 and errors[0]["row"] == 1 and errors[0]["id"] == bad_id
    assert re.search(message, errors[0]["error"])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty file", b"", r"holds no inputs"),
        ("blank lines only", b"\n\n  \n", r"holds no inputs"),
    ],
)
def test_file_level_problems_fail_even_under_skip(tmp_path, bert_embedder, name, content, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        run_in_process(overrides(tmp_path, path, bert_embedder, "skip"))


def test_missing_parquet_column_lists_the_columns(tmp_path, bert_embedder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"uid": ["a"], "body": ["x"]}), path)
    with pytest.raises(InputError, match=r"no column 'text'; columns present: uid, body"):
        run_in_process(overrides(tmp_path, path, bert_embedder, "skip"))


def test_errors_file_is_json_lines(tmp_path, bert_embedder):
    path = write_input(tmp_path, ".jsonl", b'{"uid": "b", "text": null}\n')
    result = run_in_process(overrides(tmp_path, path, bert_embedder, "skip"))
    line = (result.run_dir / "errors.jsonl").read_text().splitlines()[0]
    assert set(json.loads(line)) == {"row", "id", "error"}
