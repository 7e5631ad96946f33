"""The preflight scan's fast path (orjson, pyarrow columns) against inputs' own reader record by
record: the same rows, bad records, repeated ids, messages and digests, for every kind of
record, in both data.on_error modes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpinfer.inputs import scan as input_scan
from ddpinfer.inputs.readers import InputError, InputSpec
from ddpinfer.inputs.scan import scan

WHITESPACE = [" ", "\t", "\u3000", "\x1c", "\u0085", "\u00a0", "\u2028", "\n"]
good_texts = st.sampled_from(["ok", "été", "字 字", ' "quoted" \\ '])
texts = st.one_of(
    good_texts,
    good_texts,
    good_texts,
    st.text(alphabet=st.sampled_from(["a", "é", "字", "\\", '"', *WHITESPACE]), max_size=6),
    st.just("\ud800 lone surrogate"),
)
good_ids = st.one_of(st.sampled_from(["a", "b", "c", "d", "0"]), st.integers(-2, 30))
ids = st.one_of(good_ids, good_ids, good_ids, st.sampled_from(["", True, 1.5, None, 2**70]))
ODD_LINES = [
    "not json",
    "[1, 2]",
    '"a string"',
    "123",
    '{"text": NaN, "uid": "n"}',
    '\ufeff{"text": "after a byte order mark", "uid": "bom"}',
    '{"text": "big id", "uid": 123456789012345678901234567890}',
    '{"text": "tab\there", "uid": "ctl"}',
    "   ",
    "",
]


@st.composite
def records(draw):
    record = {}
    if draw(st.integers(0, 9)):
        record["text"] = draw(st.one_of(texts, st.sampled_from([None, 3, ["list"]])))
    if draw(st.integers(0, 9)):
        record["uid"] = draw(ids)
    return record


jsonl_lines = st.lists(
    st.one_of(records().map(json.dumps), st.sampled_from(ODD_LINES)), min_size=1, max_size=25
)


def outcome(spec: InputSpec, fast: bool, block_rows: int = 4):
    try:
        s = scan(spec, block_rows, record_by_record=not fast)
    except InputError as e:
        return "error", str(e)
    return (
        s.num_rows,
        s.bad_rows,
        s.duplicates,
        s.digest,
        s.block_digests,
        list(s.reasons.items()),
        s.examples,
    )


def assert_paths_agree(spec: InputSpec) -> None:
    for skip in (False, True):
        specified = InputSpec(**{**vars(spec), "skip_bad": skip})
        assert outcome(specified, fast=True) == outcome(specified, fast=False)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=jsonl_lines, id_field=st.sampled_from(["uid", None]), batch_rows=st.integers(1, 6))
def test_jsonl_fast_path_agrees_with_the_reader(tmp_path, monkeypatch, lines, id_field, batch_rows):
    monkeypatch.setattr(input_scan, "BATCH_ROWS", batch_rows)
    path = tmp_path / "in.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass") + b"\xff\xfe\n")
    assert_paths_agree(InputSpec(str(path), (path,), "jsonl", id_field=id_field))


good_values = {"string": good_texts, "int": st.integers(-2, 30)}
odd_values = {
    "string": st.one_of(
        st.none(), st.text(alphabet=st.sampled_from(["a", *WHITESPACE]), max_size=3)
    ),
    "int": st.none(),
}


@st.composite
def columns(draw, kind, n):
    """Mostly good values, with a few odd ones (nulls, empty or blank strings) among them."""
    values = draw(st.lists(good_values[kind], min_size=n, max_size=n))
    for at in draw(st.lists(st.integers(0, n - 1), max_size=3)):
        values[at] = draw(odd_values[kind])
    return values


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text_type=st.sampled_from(["string", "string", "string", "int"]),
    id_type=st.sampled_from(["string", "int", None]),
    data=st.data(),
)
def test_parquet_fast_path_agrees_with_the_reader(tmp_path, text_type, id_type, data):
    n = data.draw(st.integers(1, 20))
    column = {"text": data.draw(columns(text_type, n))}
    if id_type is not None:
        column["uid"] = data.draw(columns(id_type, n))
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(column), path, row_group_size=3)  # several batches
    assert_paths_agree(InputSpec(str(path), (path,), "parquet", id_field=id_type and "uid"))


def test_whitespace_is_what_str_strip_removes():
    assert input_scan.WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())


TABLES = {
    "empty id": {"text": ["a", "b"], "uid": ["x", ""]},
    "null id": {"text": ["a", "b"], "uid": [1, None]},
    "float id": {"text": ["a", "b"], "uid": [1.0, 2.5]},
    "bool id": {"text": ["a", "b"], "uid": [True, False]},
    "null text": {"text": ["a", None], "uid": ["x", "y"]},
    "blank text": {"text": ["a", input_scan.WHITESPACE], "uid": ["x", "y"]},
    "empty text": {"text": ["", "b"], "uid": ["x", "y"]},
    "int text": {"text": [1, 2], "uid": ["x", "y"]},
    "repeated id": {"text": ["a", "b", "c"], "uid": ["x", "y", "x"]},
    "large strings": {"text": pa.array(["a", " "], pa.large_string()), "uid": ["x", "y"]},
    "dictionary text": {"text": pa.array(["a", "a"]).dictionary_encode(), "uid": ["x", "y"]},
}


@pytest.mark.parametrize("table", TABLES.values(), ids=TABLES.keys())
def test_parquet_and_arrow_odd_columns_agree_with_the_reader(tmp_path, table):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table(table), path)
    assert_paths_agree(InputSpec(str(path), (path,), "parquet", id_field="uid"))
    arrow = tmp_path / "data.arrow"
    with pa.ipc.new_stream(arrow, pa.table(table).schema) as writer:
        writer.write_table(pa.table(table))
    assert_paths_agree(InputSpec(str(arrow), (arrow,), "hf_dataset", id_field="uid"))


def test_the_whole_input_digest_does_not_depend_on_the_path_or_block_size(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "uid": i}) + "\n" for i in range(50)))
    spec = InputSpec(str(path), (path,), "jsonl", id_field="uid")
    digests = {scan(spec, b, record_by_record=r).digest for b in (1, 7, 64) for r in (True, False)}
    assert len(digests) == 1


def test_a_fast_path_batch_that_raises_first_checks_the_rows_before_it(tmp_path, monkeypatch):
    monkeypatch.setattr(input_scan, "BATCH_ROWS", 100)
    path = tmp_path / "in.jsonl"
    lines = [{"text": "a", "uid": "x"}, {"text": "b", "uid": "x"}, "broken"]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines))
    with pytest.raises(InputError, match=r"in.jsonl:2: duplicate id 'x'"):
        scan(InputSpec(str(path), (path,), "jsonl", id_field="uid"))
