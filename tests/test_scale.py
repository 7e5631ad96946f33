"""What a job at scale needs from rank 0's preflight: the other ranks wait for a scan longer
than run.timeout_s."""

import pytest
from helpers import assert_complete, check, launch, resumable_job


@pytest.mark.slow  # two processes, and a scan held for 12 s
def test_a_scan_longer_than_the_collective_timeout_does_not_fail_the_job(tmp_path, bert_embedder):
    args = resumable_job(tmp_path, bert_embedder, 12)
    # rank 1 waits 12 s for rank 0's scan: a collective would give up after 5
    slow_scan = ["run.timeout_s=5", "fault.scan_delay_s=12"]
    check(launch([*args, *slow_scan], nproc=2, cwd=tmp_path, timeout=600))
    assert_complete(tmp_path, 12)


def test_the_scan_is_reused_until_an_input_file_changes(tmp_path, monkeypatch):
    import os

    from helpers import write_jsonl

    from ddpinfer.inputs import scan_cache
    from ddpinfer.inputs.readers import open_spec

    data = write_jsonl(tmp_path / "in.jsonl", [f"text {i}" for i in range(100)])
    spec = open_spec(str(data), "auto", "text", "uid")
    real, scans = scan_cache.scan, []
    monkeypatch.setattr(scan_cache, "scan", lambda *a: scans.append(a) or real(*a))

    def cached_scan(spec):
        result, scanned = scan_cache.cached_scan(spec, 8, tmp_path)
        if scanned:
            scan_cache.store(spec, tmp_path, result)
        return result

    first = cached_scan(spec)
    again = cached_scan(spec)
    assert len(scans) == 1 and again.digest == first.digest and again.num_rows == 100
    assert again.seek is not None and len(again.seek) == len(first.seek)
    cached_scan(open_spec(str(data), "auto", "text", None))
    assert len(scans) == 2  # another id field: scanned again
    with open(data, "a") as f:  # appended rows
        f.write('{"uid": "doc-100", "text": "one more"}\n')
    os.utime(data, ns=(0, os.stat(data).st_mtime_ns + 1))
    assert cached_scan(spec).num_rows == 101 and len(scans) == 3


def test_a_rerun_of_a_finished_job_with_its_output_intact_does_not_merge_again(
    tmp_path, bert_embedder, monkeypatch
):
    from helpers import run_in_process

    import ddpinfer.runner as runner

    args = resumable_job(tmp_path, bert_embedder, 12)
    run_in_process(args, cwd=tmp_path)
    out = tmp_path / "out.jsonl"
    written = out.read_bytes()
    merges = []
    real = runner.merge_parts
    monkeypatch.setattr(runner, "merge_parts", lambda *a: merges.append(a) or real(*a))
    run_in_process(args, cwd=tmp_path)
    assert merges == [] and out.read_bytes() == written
    out.write_bytes(written[:-10])  # cut short: merged again
    run_in_process(args, cwd=tmp_path)
    assert len(merges) == 1 and out.read_bytes() == written
    assert_complete(tmp_path, 12)


def test_a_refused_run_leaves_the_scan_cache_as_it_was(tmp_path, bert_embedder):
    import pytest
    from helpers import run_in_process

    from ddpinfer.errors import UserError

    args = resumable_job(tmp_path, bert_embedder, 12)
    run_in_process(args, cwd=tmp_path)
    cache = tmp_path / "runs" / "job" / "scan.pickle"
    kept = cache.read_bytes()
    with pytest.raises(UserError, match="unit"):
        run_in_process([*args, "data.unit_size=3"], cwd=tmp_path)
    assert cache.read_bytes() == kept
