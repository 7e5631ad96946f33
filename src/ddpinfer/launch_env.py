"""Who started this process, and where it sits: the only module that reads launcher variables.

Detection order (first match wins, and the order matters):
  1. torchrun (also `python -m torch.distributed.run`): it sets RANK, LOCAL_RANK, WORLD_SIZE.
     Checked first because torchrun is often started *inside* a SLURM allocation, where the
     SLURM variables describe the srun task, not the worker.
  2. single process: plain `python launch/infer.py`, a world of one with no process group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class LaunchError(RuntimeError):
    """The launcher's variables are missing, inconsistent or describe an unsupported set-up."""


@dataclass(frozen=True, kw_only=True)
class LaunchEnv:
    launcher: str
    """torchrun | single"""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    init_method: str | None = None
    """How the process group finds its peers: 'env://' under torchrun, None for a single process."""
    job_id: str | None = None
    """The scheduler's job id, when there is one."""
    restart_count: int = 0
    """How often torchrun restarted the worker group (elastic restarts)."""

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


def _check_ranks(env: LaunchEnv) -> LaunchEnv:
    if not 0 <= env.rank < env.world_size:
        raise LaunchError(f"rank {env.rank} is outside world size {env.world_size}")
    if not 0 <= env.local_rank < env.local_world_size:
        raise LaunchError(
            f"local rank {env.local_rank} is outside local world size {env.local_world_size}"
        )
    return env


def from_torchrun(environ: Mapping[str, str]) -> LaunchEnv | None:
    if not all(k in environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    return _check_ranks(
        LaunchEnv(
            launcher="torchrun",
            rank=_int(environ, "RANK"),
            local_rank=_int(environ, "LOCAL_RANK"),
            world_size=_int(environ, "WORLD_SIZE"),
            local_world_size=_int(environ, "LOCAL_WORLD_SIZE", 1),
            node_rank=_int(environ, "GROUP_RANK", 0),
            init_method="env://",
            job_id=environ.get("SLURM_JOB_ID"),
            restart_count=_int(environ, "TORCHELASTIC_RESTART_COUNT", 0),
        )
    )


def single_process(environ: Mapping[str, str]) -> LaunchEnv:
    return LaunchEnv(launcher="single", job_id=environ.get("SLURM_JOB_ID"))


def detect(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launch environment (``os.environ`` by default) in the documented order."""
    environ = os.environ if environ is None else environ
    return from_torchrun(environ) or single_process(environ)
