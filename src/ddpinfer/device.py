"""Choose and pin this process's device, and size its CPU thread pool."""

from __future__ import annotations

import os

import torch

from ddpinfer.errors import UserError
from ddpinfer.launch_env import LaunchEnv


class DeviceError(UserError):
    """The requested device cannot be provided to this process."""


def resolve_device(
    requested: str,
    env: LaunchEnv,
    *,
    cuda_available: bool | None = None,
    device_count: int | None = None,
) -> torch.device:
    """Map ``device=auto|cpu|cuda`` to this process's device: ``cuda:{local_rank}`` or ``cpu``."""
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cpu" or (requested == "auto" and not cuda_available):
        return torch.device("cpu")
    if not cuda_available:
        raise DeviceError(
            "device=cuda was asked for but CUDA is not available to this process. "
            "HINT: check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or run with device=cpu."
        )
    device_count = torch.cuda.device_count() if device_count is None else device_count
    if env.local_world_size > device_count:
        raise DeviceError(
            f"{env.local_world_size} processes were started on this node but only {device_count} "
            f"GPU(s) are visible, so rank {env.rank} (local rank {env.local_rank}) has no GPU of "
            f"its own. HINT: start at most {device_count} per node "
            f"(torchrun --nproc_per_node={device_count}, or fewer SLURM tasks per node)."
        )
    return torch.device("cuda", env.local_rank)


def pin_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device, before any other CUDA work.

    Without this, stray allocations (and NCCL's communicator) land on cuda:0 in every process.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_cpu_threads(requested: int | None, local_world_size: int) -> int:
    """Give each process its share of the node's cores (torchrun's default is one thread)."""
    threads = requested or max(1, available_cores() // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads
