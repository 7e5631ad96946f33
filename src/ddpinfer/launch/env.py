"""Who started this process, and where it sits: the only module that reads launcher variables.

Detection order (first match wins, and the order matters):
  1. torchrun (also `python -m torch.distributed.run`): it sets RANK, LOCAL_RANK, WORLD_SIZE.
     Checked first because torchrun is often started *inside* a SLURM allocation, where the
     SLURM variables describe the srun task, not the worker.
  2. SLURM, only for a process started by `srun` (SLURM_STEP_ID is set): one task per rank, with
     rank, local rank and world size from SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS, and the
     rendezvous on the first host of the step at a port derived from the job id. The batch
     script itself (no step) is not a rank: it is a single process.
  3. single process: plain `python launch/infer.py`, a world of one with no process group.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ddpinfer.errors import UserError
from ddpinfer.launch.nodelist import expand_tasks_per_node, first_host

# Ports 20000-39999: above most services' fixed ports and below Linux's ephemeral range.
PORT_BASE, PORT_SPAN = 20000, 20000


class LaunchError(UserError):
    """The launcher's variables are missing, inconsistent or describe an unsupported set-up."""


@dataclass(frozen=True, kw_only=True)
class LaunchEnv:
    launcher: str
    """torchrun | slurm | single"""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    store_addr: str | None = None
    store_port: int | None = None
    """Where the rendezvous key-value store is (MASTER_ADDR/MASTER_PORT under torchrun; the
    first host and a job-derived port under srun). The process group and heartbeats use it."""
    store_hosted_by_agent: bool = False
    """torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE); else rank 0 does."""
    job_id: str | None = None
    """The scheduler's job id, when there is one."""
    restart_count: int = 0
    """How often torchrun restarted the worker group (elastic restarts)."""
    gpus_per_task: int | None = None
    """GPUs the scheduler bound to this task alone (srun --gpus-per-task=k); None: not bound."""
    requeue_count: int = 0
    """How often SLURM requeued the job (SLURM_RESTART_COUNT), whatever started the ranks."""
    run_id: str | None = None
    """torchrun's rendezvous id (TORCHELASTIC_RUN_ID): the same for every attempt of a job."""
    step_id: str | None = None
    """The SLURM step this process runs in (SLURM_STEP_ID): two sruns of one job differ here."""
    host: str = ""
    """This machine's host name."""

    @property
    def is_first_attempt(self) -> bool:
        """Neither a torchrun restart nor a SLURM requeue: the job's very first try."""
        return self.restart_count == 0 and self.requeue_count == 0

    @property
    def attempt(self) -> int:
        """Which try of the job this is (0: the first): torchrun restarts plus SLURM requeues."""
        torchrun_restarts = 0 if self.launcher == "slurm" else self.restart_count
        return torchrun_restarts + self.requeue_count

    @property
    def job_key(self) -> str | None:
        """What every attempt of one job shares and no other live job has: the SLURM job id and
        step, else torchrun's run id. None when there is no such thing: torchrun's static
        rendezvous (``--master_port``) and c10d without ``--rdzv-id`` give every job the run id
        ``none``."""
        if self.job_id:
            return self.job_id if self.step_id is None else f"{self.job_id}.{self.step_id}"
        return self.run_id if self.run_id not in (None, "", "none") else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(environ: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = environ.get(key)
    if raw is None:
        if default is None:
            raise LaunchError(f"{key} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"{key}={raw!r} is not an integer") from None


def _step_id(environ: Mapping[str, str]) -> str | None:
    return environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")


def _host(environ: Mapping[str, str]) -> str:
    # The kernel's name, not SLURMD_NODENAME: the run lock compares it with a name recorded by a
    # job that may not have run under SLURM, to decide whether a PID can be checked here.
    return socket.gethostname()


def _check_ranks(env: LaunchEnv) -> LaunchEnv:
    if not 0 <= env.rank < env.world_size:
        raise LaunchError(f"rank {env.rank} is outside world size {env.world_size}")
    if not 0 <= env.local_rank < env.local_world_size:
        raise LaunchError(
            f"local rank {env.local_rank} is outside local world size {env.local_world_size}"
        )
    return env


def _in_srun_step(environ: Mapping[str, str]) -> bool:
    return "SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ


def _srun_tasks_on_this_node(environ: Mapping[str, str]) -> int:
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE")
    if not spec:
        return 1
    counts = expand_tasks_per_node(spec)
    node = _int(environ, "SLURM_NODEID", 0)
    return counts[node] if node < len(counts) else counts[-1]


def from_torchrun(environ: Mapping[str, str]) -> LaunchEnv | None:
    if not all(k in environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    if _in_srun_step(environ) and (tasks := _srun_tasks_on_this_node(environ)) > 1:
        raise LaunchError(
            f"torchrun was started by srun with {tasks} tasks on this node, so each task starts "
            f"its own torchrun and the node runs {tasks} x nproc_per_node workers. HINT: start one "
            "torchrun per node (srun --ntasks-per-node=1, as slurm/infer.sbatch does), or drop "
            "torchrun and run one srun task per GPU (slurm/infer-srun.sbatch)."
        )
    return _check_ranks(
        LaunchEnv(
            launcher="torchrun",
            rank=_int(environ, "RANK"),
            local_rank=_int(environ, "LOCAL_RANK"),
            world_size=_int(environ, "WORLD_SIZE"),
            local_world_size=_int(environ, "LOCAL_WORLD_SIZE", 1),
            node_rank=_int(environ, "GROUP_RANK", 0),
            store_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            store_port=_int(environ, "MASTER_PORT", 29500),
            store_hosted_by_agent=environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
            job_id=environ.get("SLURM_JOB_ID"),
            restart_count=_int(environ, "TORCHELASTIC_RESTART_COUNT", 0),
            requeue_count=_int(environ, "SLURM_RESTART_COUNT", 0),
            run_id=environ.get("TORCHELASTIC_RUN_ID") or None,
            step_id=_step_id(environ) if "SLURM_JOB_ID" in environ else None,
            host=_host(environ),
        )
    )


def slurm_port(job_id: str) -> int:
    """A rendezvous port from the job id, so two jobs sharing a node do not collide."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def _gpus_per_task(environ: Mapping[str, str]) -> int | None:
    """SLURM_GPUS_PER_TASK is ``[type:]count`` (``2`` or ``a100:2``)."""
    raw = environ.get("SLURM_GPUS_PER_TASK")
    if not raw:
        return None
    count = raw.rsplit(":", 1)[-1]
    if not count.isdigit():
        raise LaunchError(f"SLURM_GPUS_PER_TASK={raw!r} does not end in a GPU count")
    return int(count)


def from_slurm(environ: Mapping[str, str]) -> LaunchEnv | None:
    if not (_in_srun_step(environ) and "SLURM_PROCID" in environ):
        return None
    world_size = _int(environ, "SLURM_NTASKS", 1)
    started = environ.get("SLURM_STEP_NUM_TASKS")
    if started is not None and int(started) != world_size:
        raise LaunchError(
            f"SLURM_NTASKS={world_size} but srun started {started} tasks in this step "
            f"(SLURM_STEP_NUM_TASKS), so ranks would wait for peers that never come. HINT: run "
            f"srun with the same --ntasks as the allocation, or leave -n off srun."
        )
    job_id = environ.get("SLURM_JOB_ID", "0")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set, so rank 0's host is unknown")
    addr = environ.get("MASTER_ADDR") or first_host(nodelist)
    port = _int(environ, "MASTER_PORT", slurm_port(job_id))
    return _check_ranks(
        LaunchEnv(
            launcher="slurm",
            rank=_int(environ, "SLURM_PROCID"),
            local_rank=_int(environ, "SLURM_LOCALID", 0),
            world_size=world_size,
            local_world_size=_srun_tasks_on_this_node(environ),
            node_rank=_int(environ, "SLURM_NODEID", 0),
            store_addr=addr,
            store_port=port,
            job_id=job_id,
            restart_count=_int(environ, "SLURM_RESTART_COUNT", 0),
            gpus_per_task=_gpus_per_task(environ),
            requeue_count=_int(environ, "SLURM_RESTART_COUNT", 0),
            step_id=_step_id(environ),
            host=_host(environ),
        )
    )


def single_process(environ: Mapping[str, str]) -> LaunchEnv:
    return LaunchEnv(
        launcher="single",
        job_id=environ.get("SLURM_JOB_ID"),
        requeue_count=_int(environ, "SLURM_RESTART_COUNT", 0),
        host=_host(environ),
    )


def detect(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launch environment (``os.environ`` by default) in the documented order."""
    environ = os.environ if environ is None else environ
    return from_torchrun(environ) or from_slurm(environ) or single_process(environ)
