"""The whole job's progress on rank 0: counts from every rank through the store, shown as one
bar on a terminal or as a line every log.progress_every_s without one."""

import os
import pty
import subprocess

import pytest
from helpers import TEXTS, check, launch, subprocess_env, torchrun_cmd, write_jsonl

from ddpinfer.config import LogConfig
from ddpinfer.results.progress import Display, LocalCounters, Reporter, Snapshot, progress_line


def test_reporters_add_up_across_ranks_and_the_display_reads_the_total():
    counters = LocalCounters()
    reporters = [Reporter(counters, rank) for rank in range(3)]
    reporters[0].batch_done(rows=4, errors=1, tokens_so_far=40)
    reporters[0].batch_done(rows=4, errors=0, tokens_so_far=70)
    reporters[2].batch_done(rows=2, errors=0, tokens_so_far=10)
    display = Display(counters, 3, total=20, initial=5, cfg=LogConfig(progress=False))
    snapshot = display.read()
    assert snapshot.done == 15 and snapshot.inputs == [8, 0, 2] and snapshot.tokens == [70, 0, 10]
    assert reporters[0].counts.errors == 1 and snapshot.slowest[0] == 1


def test_progress_line_names_total_rates_eta_and_slowest_rank():
    snapshot = Snapshot(done=60, total=100, elapsed_s=10.0, inputs=[40, 20], tokens=[400, 200])
    line = progress_line(snapshot)
    assert "60/100 inputs (60%)" in line and "6.0 inputs/s" in line and "60 tokens/s" in line
    assert "slowest rank 1 at 2.0 inputs/s" in line and "ETA 0:00:07" in line


def run_on_pty(cmd, cwd, timeout=900) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; everything it printed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=timeout) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def job_args(tmp_path, bert_embedder, *extra):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    return [
        f"model.path={bert_embedder}",
        f"data.path={data}",
        f"output.path={tmp_path / 'out.jsonl'}",
        f"run.root={tmp_path / 'runs'}",
        "data.unit_size=3",
        "batch_size=2",
        "fault.delay_s=0.4",  # a few seconds: the bar is redrawn several times
        *extra,
    ]


@pytest.mark.slow
def test_bar_on_a_terminal_reaches_the_total_over_two_ranks(tmp_path, bert_embedder):
    cmd = torchrun_cmd(job_args(tmp_path, bert_embedder), 2)
    console = run_on_pty(cmd, tmp_path)
    assert "11/11" in console and "tokens/s, slowest rank" in console
    assert "\r" in console  # redrawn in place
    assert "units 0" not in console  # per-unit lines go to the rank logs only
    run_dir = next((tmp_path / "runs").iterdir())
    assert "done (" in (run_dir / "logs" / "rank0.log").read_text()


@pytest.mark.slow
def test_without_a_terminal_one_line_every_progress_every_s(tmp_path, bert_embedder):
    args = job_args(tmp_path, bert_embedder, "log.progress_every_s=0.5")
    result = check(launch(args, nproc=2, cwd=tmp_path))
    lines = [line for line in result.stderr.splitlines() if "progress: " in line]
    assert lines and all("/11 inputs" in line for line in lines)
    assert "\r" not in result.stderr and "units 0" not in result.stderr
