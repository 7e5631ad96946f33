"""Both sbatch scripts, unedited, on a real two-node SLURM cluster on this host
(slurm/local-cluster.sh; .ci/run starts it). Skipped where SLURM cannot be started, except in CI."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TEXTS, read_jsonl, run_in_process, subprocess_env, write_jsonl

# xdist_group: every SLURM test on one worker (they share the local cluster and its two nodes)
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

CLUSTER = REPO / "slurm" / "local-cluster.sh"
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/ddpinfer-slurm"))
# The local nodes have 4 CPUs and 2 stand-in GPUs each: ask for that on the sbatch command line,
# as a user adapts the scripts to a cluster, without editing them.
TWO_NODES = ["--nodes=2", "--gpus-per-node=2"]
# Both launch styles, two ranks per node: one torchrun with 2 workers, or 2 srun tasks.
SCRIPTS = [
    ("infer.sbatch", ["--cpus-per-task=2"]),
    ("infer-srun.sbatch", ["--ntasks-per-node=2", "--cpus-per-task=1"]),
]
# One rank per node, for the failure and requeue tests: what they check happens between nodes,
# and half the processes keep the suite short on a 2-core machine.
ONE_PER_NODE = ["--nodes=2", "--gpus-per-node=1"]
SCRIPTS_ONE_PER_NODE = [
    ("infer.sbatch", ["--cpus-per-task=2"]),
    ("infer-srun.sbatch", ["--ntasks-per-node=1", "--cpus-per-task=2"]),
]


def _cluster_up(env) -> bool:
    if not shutil.which("sinfo") or not (SLURM_DIR / "slurm.conf").exists():
        return False
    result = subprocess.run(
        ["sinfo", "-h", "-t", "idle,mix,alloc", "-o", "%D"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return result.returncode == 0 and result.stdout.strip() != ""


@pytest.fixture(scope="module")
def slurm_env():
    env = {
        **subprocess_env(),
        "SLURM_CONF": str(SLURM_DIR / "slurm.conf"),
        "PYTHON": sys.executable,
    }
    started = False
    if not _cluster_up(env):
        result = subprocess.run(
            [str(CLUSTER), "start"], capture_output=True, text=True, timeout=900
        )
        started = result.returncode == 0
        if not started or not _cluster_up(env):
            message = f"cannot start the local SLURM cluster: {result.stderr[-2000:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    yield env
    if started:
        subprocess.run([str(CLUSTER), "stop"], timeout=120)


def sbatch(
    env,
    workdir: Path,
    script: str,
    options: list[str],
    overrides: list[str],
    timeout: float = 600,
) -> tuple[str, str, str]:
    """Submit from the repository root, run in ``workdir``; (JobState, ExitCode, job log)."""
    cmd = [
        "sbatch",
        "--parsable",
        f"--chdir={workdir}",
        f"--output={workdir}/slurm-%j.out",
        *options,
        str(REPO / "slurm" / script),
        *overrides,
    ]
    submitted = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stderr
    deadline = time.monotonic() + timeout
    # squeue every 0.25 s tells sooner than sbatch --wait, which polls at 2, 8 then 32 s.
    while in_queue(env, job_id):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=env)
            pytest.fail(f"job {job_id} still running after {timeout}s")
        time.sleep(0.25)
    fields = job_fields(env, job_id)
    state, code = fields["JobState"], fields["ExitCode"]
    log = (workdir / f"slurm-{job_id}.out").read_text()
    return state, code, log


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory, bert_embedder):
    root = tmp_path_factory.mktemp("slurm")
    write_jsonl(root / "in.jsonl", TEXTS)
    common = [
        f"model.path={bert_embedder}",
        f"data.path={root / 'in.jsonl'}",
        "data.id_field=uid",
        "data.unit_size=2",
        "batch_size=4",
    ]
    reference = root / "single.jsonl"
    run_in_process([*common, f"output.path={reference}", f"run.root={root}/runs"])
    return root, common, read_jsonl(reference)


@pytest.mark.parametrize("script, options", SCRIPTS)
def test_two_nodes_two_ranks_each_equal_one_process(slurm_env, job_inputs, script, options):
    root, common, reference = job_inputs
    work = root / script
    work.mkdir()
    state, code, log = sbatch(
        slurm_env, work, script, [*TWO_NODES, *options], [*common, "output.path=out.jsonl"]
    )
    assert (state, code) == ("COMPLETED", "0:0"), log
    ours = read_jsonl(work / "out.jsonl")
    assert [r["id"] for r in ours] == [r["id"] for r in reference]
    np.testing.assert_allclose(
        [r["embedding"] for r in ours], [r["embedding"] for r in reference], atol=1e-5
    )
    run_dirs = list((work / "runs").iterdir())
    assert len(run_dirs) == 1  # all four ranks on both nodes shared one run directory
    assert sorted(p.name for p in (run_dirs[0] / "logs").iterdir()) == [
        f"rank{r}.log" for r in range(4)
    ]


@pytest.mark.parametrize("script, options", SCRIPTS_ONE_PER_NODE)
def test_a_failing_rank_fails_the_job(slurm_env, job_inputs, script, options):
    root, common, _ = job_inputs
    work = root / f"fail-{script}"
    work.mkdir()
    state, code, log = sbatch(
        slurm_env,
        work,
        script,
        [*ONE_PER_NODE, *options],
        [*common, "output.path=out.jsonl", "fault.rank=1"],
    )
    # the job's state and exit code are what `sbatch --wait` and job arrays see (--wait itself
    # polls at 2, 8 then 32 s, which would add half a minute here)
    assert state == "FAILED" and code != "0:0", log
    assert "injected fault on rank 1" in log
    assert not (work / "out.jsonl").exists()


@pytest.mark.parametrize("script, options", SCRIPTS_ONE_PER_NODE)
def test_time_limit_signal_stops_requeues_and_resumes(slurm_env, job_inputs, script, options):
    """SLURM's warning before the time limit (SIGUSR1 to the batch script, as
    `--signal=B:USR1@120` sends it) stops the ranks mid-window, keeps every finished batch and
    requeues the job; the requeued job (same id, same run directory) computes only what was not
    done (plus at most a batch per rank) and completes."""
    root, common, reference = job_inputs
    work = root / f"requeue-{script}"
    work.mkdir()
    cmd = [
        "sbatch",
        "--parsable",
        f"--chdir={work}",
        f"--output={work}/slurm-%j.out",
        *ONE_PER_NODE,
        *options,
        str(REPO / "slurm" / script),
        *common,
        "output.path=out.jsonl",
        "data.unit_size=6",
        "batch_size=1",
        "log.level=DEBUG",
        "fault.delay_s=1",  # one window of 6 batches per rank: stopped in the middle of it
        f"fault.hold_file={work}/hold",
    ]
    job = subprocess.run(
        cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=300
    ).stdout.strip()

    def job_field(name: str) -> str:
        return job_fields(slurm_env, job)[name]

    wait_until(lambda: sum(attempt_rows(work, 0)) >= 4)
    hold_mid_window(work)  # however slowly the signal comes through on a busy machine
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env, check=True)
    (work / "hold").unlink()
    wait_until(lambda: job_field("Restarts") == "1")
    # A requeued job waits for a begin time SLURM sets; the test skips that wait, once the old
    # run is cleaned up on both nodes (else slurmd refuses the job: "credential revoked").
    wait_until(lambda: job_field("JobState") == "PENDING" and nodes_idle(slurm_env))
    time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env)
    wait_until(lambda: job_field("JobState") in ("COMPLETED", "FAILED"), timeout=900)
    log = (work / f"slurm-{job}.out").read_text()
    assert job_field("JobState") == "COMPLETED", log
    assert (
        "SIGUSR1: stopping the ranks" in log and "stopped by SIGTERM; finished work is kept" in log
    )
    done = sum(attempt_rows(work, 0))
    assert 4 <= done < len(TEXTS) and "resuming:" in log
    assert sum(attempt_rows(work, 1)) <= len(TEXTS) - done + 2  # a batch per rank at most
    assert [r["id"] for r in read_jsonl(work / "out.jsonl")] == [r["id"] for r in reference]


def hold_mid_window(work: Path) -> None:
    """Hold the job's ranks before their next batch (``fault.hold_file=<work>/hold``), and wait
    until one says so: a stop signal sent now finds the job mid-way, not already finished."""
    (work / "hold").touch()
    said = "fault.hold_file: rank"
    wait_until(lambda: any(said in log.read_text() for log in work.glob("runs/*/logs/rank*.log")))


def attempt_rows(work: Path, attempt: int) -> list[int]:
    """Inputs each rank computed in one attempt (kept or not): the last count it logged."""
    counts = []
    for log in sorted(work.glob("runs/*/logs/rank*.log")):
        attempts = re.split(r"launch, attempt \d+", log.read_text())[1:]
        text = attempts[attempt] if attempt < len(attempts) else ""
        found = re.findall(r"\((\d+) this attempt\)", text)
        counts.append(int(found[-1]) if found else 0)
    return counts


def in_queue(env, job_id: str) -> bool:
    """Whether the job is still queued or running (asked again while slurmctld is too busy to
    answer, as it can be when the suite loads the machine)."""
    for _ in range(40):
        result = subprocess.run(
            ["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True
        )
        if result.returncode == 0:
            return bool(result.stdout.strip())
        time.sleep(0.25)
    raise AssertionError(f"squeue -j {job_id} failed: {result.stderr}")


def job_fields(env, job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields (asked again while slurmctld does not answer)."""
    for _ in range(40):
        result = subprocess.run(
            ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True
        )
        fields = dict(re.findall(r"(\w+)=(\S*)", result.stdout))
        if "JobState" in fields:
            return fields
        time.sleep(0.25)
    raise AssertionError(f"scontrol show job {job_id} gave nothing: {result.stderr}")


def wait_until(predicate, timeout: float = 600) -> None:
    """Wait for an event; the bound only says when to give up (generous: a busy machine starts
    four Python processes through SLURM in minutes, not seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def nodes_idle(env) -> bool:
    states = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True
    ).stdout.split()
    return bool(states) and all(state == "idle" for state in states)


def submitit_sweep(work: Path, common: list[str], *extra: str) -> list[str]:
    """The Hydra way: `-m hydra/launcher=submitit_slurm`, one task per (stand-in) GPU."""
    return [
        sys.executable,
        str(REPO / "launch" / "infer.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.nodes=2",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.partition=debug",
        "hydra.launcher.timeout_min=60",  # a USR2 well before the limit means preemption
        f"hydra.sweep.dir={work}/multirun",
        *common,
        f"output.path={work}/out.jsonl",
        f"run.root={work}/runs",
        *extra,
    ]


def test_submitit_launcher_one_task_per_gpu_requeues_on_its_time_limit_signal(
    slurm_env, job_inputs
):
    """One submitit task per (stand-in) GPU on two nodes. submitit's own warning signal (USR2)
    makes it requeue the job; the requeued job (same id, same ddpinfer run directory, not
    Hydra's sweep directory) resumes and the sweep ends with the whole output."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root, common, reference = job_inputs
    work = root / "submitit-requeue"
    work.mkdir()
    slow = ("data.unit_size=1", "batch_size=1", "fault.delay_s=1.5", f"fault.hold_file={work}/hold")
    parts = lambda: list(work.glob("runs/*/parts/*/unit-*.arrow"))  # noqa: E731
    log_file = work / "sweep.log"
    with open(log_file, "w") as log:
        sweep = subprocess.Popen(
            submitit_sweep(work, common, *slow),
            cwd=work,
            env=slurm_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until(lambda: len(parts()) >= 2 or sweep.poll() is not None)
    assert sweep.poll() is None, log_file.read_text()
    hold_mid_window(work)  # however slowly the signal comes through on a busy machine
    job = next(p.name for p in (work / "multirun" / ".submitit").iterdir() if p.name.isdigit())

    def job_field(name: str) -> str:
        return job_fields(slurm_env, job)[name]

    subprocess.run(["scancel", "--signal=USR2", job], env=slurm_env, check=True)
    (work / "hold").unlink()
    wait_until(lambda: job_field("Restarts") == "1")
    wait_until(lambda: job_field("JobState") == "PENDING" and nodes_idle(slurm_env))
    time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_env)
    assert sweep.wait(timeout=900) == 0, log_file.read_text()
    assert [r["id"] for r in read_jsonl(work / "out.jsonl")] == [r["id"] for r in reference]
    (run_dir,) = (work / "runs").iterdir()
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    assert re.search(rf"resuming: [1-9]\d* of {len(TEXTS)} work unit\(s\) already done", log)
    (entry,) = json.loads((run_dir / "manifest.json").read_text())["attempts"]
    assert entry["launcher"]["name"] == "slurm"
    assert entry["launcher"]["restart_count"] == 1 and entry["launcher"]["job_id"] == job
    assert entry["world_size"] == 4
    assert [d["rank"] for d in entry["devices"]] == [0, 1, 2, 3]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == [
        f"rank{r}.log" for r in range(4)
    ]
