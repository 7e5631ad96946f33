"""A fault campaign: a job stopped by a random fault at a random moment, then run again until it
exits 0, and its output compared with a fresh run's. Used by the suite's short seeded campaign
(``test_fault_campaign.py``) and by ``benchmarks/bench_faults.py``'s long one.

Faults are triggered by events, never by sleeps: once the job's run directory holds a chosen
number of files (journals and parts), the fault strikes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from helpers import LAUNCHER, TEXTS, run_files, subprocess_env, torchrun_cmd, write_jsonl

KINDS = ("kill-rank", "freeze", "kill-job", "sigterm", "sigint", "two-kills", "damage")
TWO_RANKS = ("kill-rank", "freeze")
"""Kinds that strike one rank of two (under torchrun); the others, a job of one process."""
EXPECTED_EXIT = {"sigterm": {75}, "sigint": {130}}
"""Exit codes a stopped attempt must end with (others: anything but 0 before the end)."""
DAMAGE = ("zero tail", "truncate", "garbage", "flip")


@dataclass
class Trial:
    kind: str
    exact: bool
    hang: bool
    wrong_exit: bool
    recomputed: float
    """Inputs the re-runs computed beyond those no attempt had finished, as a share of all."""


def job_args(folder: Path, model: Path, name: str) -> list[str]:
    return [
        f"model.path={model}",
        f"data.path={folder / 'in.jsonl'}",
        "data.id_field=uid",
        "data.unit_size=4",
        "batch_size=2",
        "batch.sort_rows=8",
        f"output.path={folder / (name + '.jsonl')}",
        f"run.dir={folder / name}",
        "run.heartbeat_s=0.5",
        "run.dead_after_s=4",
        "log.level=DEBUG",
        "cpu_threads=1",
    ]


def prepare(folder: Path, model: Path, rows: int) -> list[dict]:
    """The inputs, and a fresh run's output to compare with."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "in.jsonl", [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(rows)])
    subprocess.run(
        [sys.executable, str(LAUNCHER), *job_args(folder, model, "ref")],
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return _read(folder / "ref.jsonl")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(run_dir: Path) -> list[Path]:
    """The run directory's journals, parts and fragments (in its units' folders)."""
    return run_files(run_dir / "parts")


def _wait_files(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Until the run directory holds ``count`` journals and parts (False: the job ended)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len([p for p in _files(run_dir) if not p.name.startswith(".")]) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _ranks(proc: subprocess.Popen) -> list[int]:
    """The pids of torchrun's workers (the children of its agent)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _start(folder: Path, model: Path, two_ranks: bool, slow: bool) -> subprocess.Popen:
    args = [*job_args(folder, model, "out"), *(["fault.delay_s=0.3"] if slow else [])]
    cmd = torchrun_cmd(args, 2) if two_ranks else [sys.executable, str(LAUNCHER), *args]
    log = open(folder / "attempts.log", "a")
    return subprocess.Popen(
        cmd,
        cwd=folder,
        env=subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _damage(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        return
    how = rng.choice(DAMAGE)
    if how == "zero tail":
        cut = len(data) - int(rng.integers(1, min(200, len(data)) + 1))
        data[cut:] = bytes(len(data) - cut)
    elif how == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif how == "garbage":
        data += rng.bytes(int(rng.integers(1, 300)))
    else:
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[at] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))


def _strike(kind: str, proc: subprocess.Popen, rng: np.random.Generator) -> None:
    if kind in TWO_RANKS:  # freeze: SIGSTOP, a node lost without a word, past run.dead_after_s
        ranks = _ranks(proc)
        if ranks:
            os.kill(
                int(rng.choice(ranks)), signal.SIGKILL if kind == "kill-rank" else signal.SIGSTOP
            )
    elif kind in ("kill-job", "two-kills", "damage"):
        os.killpg(proc.pid, signal.SIGKILL)
    elif kind == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif kind == "sigint":
        proc.send_signal(signal.SIGINT)


def _end_leftovers(proc: subprocess.Popen) -> None:
    """A frozen rank outlives its job when nothing kills it (a stopped process acts on no
    signal but SIGKILL): the campaign ends it, as the scheduler ends a lost node's."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _computed(folder: Path) -> int:
    """Inputs the last re-run computed (its running count in the log). Re-runs are one
    process: a rank1.log there is the faulty attempt's, left over."""
    log = folder / "out" / "logs" / "rank0.log"
    counts = re.findall(r"\((\d+) this attempt\)", log.read_text().split("command:")[-1])
    return int(counts[-1]) if counts else 0


def run_trial(
    folder: Path, model: Path, kind: str, seed: int, reference: list[dict], timeout: float = 300
) -> Trial:
    """One fault of ``kind`` at a random moment, then re-runs until exit 0 (at most 4)."""
    rng = np.random.default_rng(seed)
    run_dir = folder / "out"
    hang = wrong_exit = False
    strikes = 2 if kind == "two-kills" else 1
    for _ in range(strikes):
        proc = _start(folder, model, kind in TWO_RANKS, slow=True)
        if _wait_files(run_dir, int(rng.integers(1, 6)), proc):
            _strike(kind, proc, rng)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hang = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        _end_leftovers(proc)
        finished = (folder / "out.jsonl").exists()
        if code not in EXPECTED_EXIT.get(kind, {code}) and not finished:
            wrong_exit = True
        if code == 0 and not finished:
            wrong_exit = True
    if kind == "damage":
        files = _files(run_dir)
        for path in rng.choice(files, size=min(len(files), 3), replace=False) if files else []:
            _damage(Path(path), rng)
    left = len(reference) - _rows_held(run_dir)
    computed = 0
    for _ in range(4):
        proc = _start(folder, model, two_ranks=False, slow=False)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hang = True
            os.killpg(proc.pid, signal.SIGKILL)
            continue
        computed += _computed(folder)
        if code == 0:
            break
    exact = _same(folder / "out.jsonl", reference)
    return Trial(kind, exact, hang, wrong_exit, max(0, computed - left) / len(reference))


def _rows_held(run_dir: Path) -> int:
    """Rows the run directory holds in files that verify (what a re-run need not compute)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ddpinfer.rundir.journal import journals, read_journal
    from ddpinfer.rundir.parts import held_rows, unit_files

    rows: set[int] = set()
    for paths in unit_files(run_dir).values():
        for path in paths:
            rows.update(held_rows(path) or ())
    for path in journals(run_dir):
        for table in read_journal(path):
            rows.update(table.column("row").to_pylist())
    return len(rows)


def _same(path: Path, reference: list[dict]) -> bool:
    if not path.exists():
        return False
    got = _read(path)
    if [r["id"] for r in got] != [r["id"] for r in reference]:
        return False
    a = np.array([r["embedding"] for r in got])
    b = np.array([r["embedding"] for r in reference])
    return bool(np.allclose(a, b, atol=1e-5))
