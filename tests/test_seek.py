"""A rank reads only its own windows: rows between them are not decoded, and the rows it reads
are the same (values, ids, file:line) as one pass over the whole input gives."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ddpinfer.inputs.readers as readers
import ddpinfer.inputs.row_stream as row_stream
from ddpinfer.inputs.readers import open_spec, read_rows
from ddpinfer.inputs.row_stream import RowStream
from ddpinfer.inputs.scan import scan
from ddpinfer.inputs.seek import SeekIndex
from ddpinfer.plan.work_units import plan_units

UNIT = 8


def write_inputs(folder, fmt):
    """Two files of 100 records each, with blank lines, a byte-order mark and non-ASCII text."""
    folder.mkdir()
    for k in range(2):
        texts = [f"t{k}-{i} é" for i in range(100)]
        if fmt == "parquet":
            table = pa.table({"text": texts, "uid": [f"u{k}-{i}" for i in range(100)]})
            pq.write_table(table, folder / f"in{k}.parquet", row_group_size=32)
            continue
        if fmt == "jsonl":
            lines = [json.dumps({"text": t, "uid": f"u{k}-{i}"}) for i, t in enumerate(texts)]
        elif fmt == "csv":
            lines = ["text,uid"] + [f'"{t}\nmore",u{k}-{i}' for i, t in enumerate(texts)]
        else:
            lines = texts
        blank = fmt != "csv"
        lines = [x + ("\n\n" if i % 7 == 3 and blank else "\n") for i, x in enumerate(lines)]
        (folder / f"in{k}.{fmt}").write_bytes(b"\xef\xbb\xbf" + "".join(lines).encode())
    return open_spec(str(folder / f"in*.{fmt}"), "auto", "text", None if fmt == "text" else "uid")


def decoded(monkeypatch):
    """Counts the records decoded into rows."""
    count = [0]
    real = readers.make_row

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(readers, "make_row", counting)
    monkeypatch.setattr(row_stream, "make_row", counting)
    return count


def as_tuples(rows):
    return [(r.index, r.id, r.text, r.at) for r in rows]


@pytest.mark.parametrize("fmt", ["jsonl", "text", "csv", "parquet"])
@pytest.mark.parametrize("ranks", [1, 2, 7])
def test_a_rank_decodes_only_its_windows_and_reads_them_as_one_pass_does(
    tmp_path, monkeypatch, fmt, ranks
):
    spec = write_inputs(tmp_path / "in", fmt)
    found = scan(spec, UNIT)
    assert (found.seek is not None) == (fmt in ("jsonl", "text"))
    units = plan_units(found.num_rows, UNIT)
    seek = found.seek.at_rows([u.start for u in units]) if found.seek else None
    everything = as_tuples(read_rows(spec))
    count = decoded(monkeypatch)
    for rank in range(ranks):
        count[0] = 0
        stream = RowStream(spec, seek)
        mine = [units[u] for u in range(rank, len(units), ranks)]  # every ranks-th unit
        got = [row for window in mine for row in as_tuples(stream.read(window))]
        assert got == [everything[i] for window in mine for i in window]
        assert count[0] <= 1.1 * len(got)  # read amplification


def test_a_thinned_index_still_finds_every_window(tmp_path):
    spec = write_inputs(tmp_path / "in", "text")
    seek = SeekIndex(1, max_points=5)
    list(read_rows(spec, index=seek))
    assert len(seek) <= 5 and seek.stride >= 32
    everything = as_tuples(read_rows(spec))
    stream = RowStream(spec, seek)
    for window in (range(50, 55), range(120, 121), range(130, 200)):
        assert as_tuples(stream.read(window)) == everything[window.start : window.stop]
    assert as_tuples(stream.read(range(3, 9))) == everything[3:9]  # backwards: seeks back
