"""What a job at scale needs from rank 0's preflight: the other ranks wait for a scan longer
than run.timeout_s."""

from helpers import assert_complete, check, launch, resumable_job


def test_a_scan_longer_than_the_collective_timeout_does_not_fail_the_job(tmp_path, bert_embedder):
    args = resumable_job(tmp_path, bert_embedder, 12)
    # rank 1 waits 12 s for rank 0's scan: a collective would give up after 5
    slow_scan = ["run.timeout_s=5", "fault.scan_delay_s=12"]
    check(launch([*args, *slow_scan], nproc=2, cwd=tmp_path, timeout=600))
    assert_complete(tmp_path, 12)
