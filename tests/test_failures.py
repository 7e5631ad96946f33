"""Nothing lost, nothing hangs: dead and failing ranks, stop signals, resume
with another world size, OOM. Real processes on CPU."""

import re
import signal
import time

import pytest
from helpers import (
    FAST_LIVENESS,
    assert_complete,
    check,
    job_parts,
    launch,
    run_in_process,
    start_ranks,
    wait_all,
    wait_for,
    write_jsonl,
)

from ddpinfer.errors import UserError

pytestmark = pytest.mark.slow

N = 48


def rank_logs(tmp_path, world_size):
    return "\n".join((tmp_path / f"rank{r}.out").read_text() for r in range(world_size))


def test_kill_9_of_a_rank_stops_the_others_then_a_smaller_world_resumes(job):
    tmp_path, args = job
    procs = start_ranks([*args, *FAST_LIVENESS, "fault.delay_s=0.3"], 3, tmp_path)
    wait_for(lambda: len(job_parts(tmp_path)) >= 3)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    codes = wait_all(procs)
    # bounded: dead_after_s (4 s) plus a busy machine's slack, far below run.timeout_s (1800 s)
    assert time.monotonic() - killed_at < 300
    logs = rank_logs(tmp_path, 3)
    assert codes[1] == -signal.SIGKILL and codes[0] == codes[2] == 3, logs
    assert "rank 1 stopped responding" in logs
    assert not (tmp_path / "out.jsonl").exists()
    kept = len(job_parts(tmp_path))
    assert 0 < kept < 12

    result = check(launch(args, nproc=2, cwd=tmp_path))  # another world size
    resumed = re.search(r"resuming: (\d+) of 12 work unit\(s\) already done", result.stderr)
    assert resumed and int(resumed.group(1)) >= kept, result.stderr
    assert_complete(tmp_path, N)


def test_a_raising_rank_is_named_and_the_job_fails_in_bounded_time(job):
    tmp_path, args = job
    began = time.monotonic()
    procs = start_ranks(
        [*args, *FAST_LIVENESS, "fault.rank=2", "fault.at_unit=2", "fault.delay_s=0.3"], 3, tmp_path
    )
    codes = wait_all(procs)
    logs = rank_logs(tmp_path, 3)
    assert codes[2] == 1 and codes[0] == codes[1] == 3, logs
    assert "rank 2 failed: InjectedFault: injected fault on rank 2" in logs
    assert time.monotonic() - began < 600  # far below run.timeout_s (1800 s)
    assert job_parts(tmp_path)  # finished work stays on disk


def test_sigterm_stops_with_its_own_exit_code_and_keeps_finished_work(job):
    tmp_path, args = job
    procs = start_ranks([*args, *FAST_LIVENESS, "fault.delay_s=0.3"], 2, tmp_path)
    wait_for(lambda: len(job_parts(tmp_path)) >= 2)
    for p in procs:  # as SLURM signals every task of a job
        p.send_signal(signal.SIGTERM)
    codes = wait_all(procs)
    assert codes == [75, 75], rank_logs(tmp_path, 2)
    assert "run the same command again to resume" in rank_logs(tmp_path, 2)
    kept = len(job_parts(tmp_path))
    assert 0 < kept < 12

    run_in_process(args, cwd=tmp_path)
    assert "resuming" in rank0_log(tmp_path)
    assert_complete(tmp_path, N)


def test_a_preflight_error_stops_every_rank_at_once(job):
    tmp_path, args = job
    began = time.monotonic()
    result = launch([*args, "model.path=./no/such/model"], nproc=2, cwd=tmp_path)
    assert result.returncode != 0
    assert "model.path=./no/such/model: no such directory" in result.stderr
    assert time.monotonic() - began < 600  # far below run.timeout_s (1800 s)


def test_resume_is_refused_for_other_inputs_unless_fresh(job):
    tmp_path, args = job
    run_in_process(args, cwd=tmp_path)
    first = (tmp_path / "out.jsonl").read_text()
    # Another text field: nothing finished can be reused (edited rows alone are recomputed).
    with pytest.raises(UserError) as refused:  # exit code 2 from the entry point
        run_in_process([*args, "data.text_field=uid"], cwd=tmp_path)
    message = str(refused.value)
    assert "holds finished work from a different run (inputs.text_field: 'text' -> 'uid'" in message
    assert "run.fresh=true" in message
    assert (tmp_path / "out.jsonl").read_text() == first  # the finished output is untouched
    write_jsonl(tmp_path / "in.jsonl", [f"changed {i}" for i in range(N)])
    run_in_process([*args, "run.fresh=true"], cwd=tmp_path)
    assert (tmp_path / "out.jsonl").read_text() != first
    assert_complete(tmp_path, N)
    # Same command again: everything is done already; the output is written again unchanged.
    again = (tmp_path / "out.jsonl").read_text()
    run_in_process(args, cwd=tmp_path)
    assert rank0_log(tmp_path).count("12 of 12 work unit(s) already done") == 1
    assert (tmp_path / "out.jsonl").read_text() == again


def rank0_log(tmp_path) -> str:
    """Rank 0's log in the job's run directory, every attempt's lines."""
    return (tmp_path / "runs" / "job" / "logs" / "rank0.log").read_text()
