"""Every failure names the rank that failed, on every rank, with the README's exit codes: bad
files found inside a collective, a rank that dies or hangs at the finish, a stalled rank that
another rank noticed first. Real torchrun runs on CPU."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FAST_LIVENESS, TEXTS, check, launch, write_jsonl

pytestmark = pytest.mark.slow


def last_line(text: str, rank: int) -> str:
    lines = [x for x in text.splitlines() if x.startswith(f"ddpinfer: rank {rank}:")]
    return lines[-1] if lines else ""


def root_cause_rank(torchrun_output: str) -> int:
    """The rank torchrun's summary names as the first observed failure."""
    after = torchrun_output.split("Root Cause (first observed failure):", 1)[1]
    line = next(x for x in after.splitlines() if x.strip().startswith("rank"))
    return int(line.split(":")[1].split()[0])


def corrupt_parquet(path):
    pq.write_table(pa.table({"text": [f"text number {i} " * 5 for i in range(200)]}), path)
    data = bytearray(path.read_bytes())
    for i in range(200, 400):  # inside the first data page; the footer stays readable
        data[i] ^= 0x5A
    path.write_bytes(data)


@pytest.mark.parametrize("case", ["corrupt parquet", "id over 64 bits", "truncated fingerprint"])
def test_a_bad_file_found_inside_a_collective_is_named_on_every_rank(tmp_path, bert_embedder, case):
    args = [f"model.path={bert_embedder}", "output.path=out.jsonl", "run.name=job"]
    if case == "corrupt parquet":
        corrupt_parquet(tmp_path / "in.parquet")
        args += ["data.path=in.parquet"]
        expected = "in.parquet: cannot read it (OSError: Corrupt snappy compressed data.)"
    elif case == "id over 64 bits":
        records = [{"uid": i, "text": t} for i, t in enumerate(TEXTS)]
        records[3]["uid"] = 2**63
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        args += ["data.path=in.jsonl", "data.id_field=uid"]
        expected = f"in.jsonl:4: id field 'uid' is {2**63}, an integer outside 64 bits"
    else:
        write_jsonl(tmp_path / "in.jsonl", TEXTS)
        args += ["data.path=in.jsonl"]
        check(launch(args, cwd=tmp_path))
        fingerprint = tmp_path / "runs" / "job" / "fingerprint.json"
        fingerprint.write_text(fingerprint.read_text()[:100])  # a full disk cut it short
        expected = "runs/job/fingerprint.json cannot be read (JSONDecodeError"
    result = launch(args, nproc=2, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in last_line(out, 0) and "error: " in last_line(out, 0), out
    assert f"rank 0 found a problem: {expected}" in last_line(out, 1), out
    assert "Connection closed by peer" not in out and "unexpected error" not in out, out
    assert "exitcode  : 2" in out  # bad input or configuration, on both ranks


def test_a_rank_that_dies_at_the_finish_is_named_as_dead(job_of_12):
    tmp_path, args = job_of_12
    exit_at_finish = ["fault.rank=1", "fault.kind=exit", "fault.at_finish=true"]
    result = launch([*args, *FAST_LIVENESS, *exit_at_finish], nproc=2, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "stopping because rank 1 stopped responding" in last_line(out, 0), out
    assert "unexpected error" not in out and root_cause_rank(out) == 1, out


def test_a_rank_that_hangs_at_the_finish_is_named_and_fails_first(job_of_12):
    tmp_path, args = job_of_12
    hang_at_finish = ["fault.rank=1", "fault.kind=hang", "fault.at_finish=true", "run.timeout_s=8"]
    result = launch([*args, *FAST_LIVENESS, *hang_at_finish], nproc=2, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert "stopping because rank 1 stalled: alive, but it never reached the finish" in last_line(
        out, 0
    ), out
    assert "rank 1 stalled: alive, but it never reached the finish" in last_line(out, 1), out
    assert root_cause_rank(out) == 1, out


def test_a_stalled_rank_noticed_first_by_another_is_the_one_that_fails(job_of_12):
    tmp_path, args = job_of_12
    # rank 0 runs its units, then waits; rank 1 hangs before its second unit. Rank 0 gives up
    # waiting before rank 1's own stall clock runs out: rank 1 must still be the one named.
    stall = ["run.stall_after_s=20", "fault.rank=1", "fault.kind=hang", "fault.at_unit=1"]
    stall += ["fault.slow_rank=0", "fault.delay_s=0.3"]
    result = launch([*args, *FAST_LIVENESS, *stall], nproc=2, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert "stopping because rank 1 stalled" in last_line(out, 0), out
    assert "rank 1 stalled" in last_line(out, 1), out
    assert root_cause_rank(out) == 1, out


@pytest.fixture
def job_of_12(tmp_path, bert_embedder):
    from helpers import resumable_job

    return tmp_path, resumable_job(tmp_path, bert_embedder, 12)
