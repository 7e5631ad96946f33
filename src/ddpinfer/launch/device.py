"""Choose and pin this process's device, and size its CPU thread pool."""

from __future__ import annotations

import os

import torch

from ddpinfer.errors import UserError
from ddpinfer.launch.env import LaunchEnv


class DeviceError(UserError):
    """The requested device cannot be provided to this process."""


def resolve_device(
    requested: str,
    env: LaunchEnv,
    gpus_per_replica: int = 1,
    *,
    cuda_available: bool | None = None,
    device_count: int | None = None,
) -> torch.device:
    """Map ``device=auto|cpu|cuda`` to this process's device: ``cuda:{local_rank}`` or ``cpu``.

    With ``gpus_per_replica=k > 1`` the process owns k consecutive GPUs (see ``replica_gpus``)
    and the device returned is the first of them."""
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cpu" or (requested == "auto" and not cuda_available):
        if gpus_per_replica > 1:
            raise DeviceError(
                f"model.gpus_per_replica={gpus_per_replica} needs CUDA GPUs, but this process "
                "runs on the CPU. HINT: run on a GPU machine, or set model.gpus_per_replica=1."
            )
        return torch.device("cpu")
    if not cuda_available:
        raise DeviceError(
            "device=cuda was asked for but CUDA is not available to this process. "
            "HINT: check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or run with device=cpu."
        )
    device_count = torch.cuda.device_count() if device_count is None else device_count
    if gpus_per_replica > 1:
        return torch.device("cuda", _first_gpu(env, gpus_per_replica, device_count))
    if env.local_world_size > device_count:
        raise DeviceError(
            f"{env.local_world_size} processes were started on this node but only {device_count} "
            f"GPU(s) are visible, so rank {env.rank} (local rank {env.local_rank}) has no GPU of "
            f"its own. HINT: start at most {device_count} per node "
            f"(torchrun --nproc_per_node={device_count}, or fewer SLURM tasks per node)."
        )
    return torch.device("cuda", env.local_rank)


def _first_gpu(env: LaunchEnv, k: int, device_count: int) -> int:
    """GPUs local_rank*k ... local_rank*k+k-1 of those visible (indices count after
    CUDA_VISIBLE_DEVICES); 0 ... k-1 when the scheduler already bound exactly k to this task."""
    if env.gpus_per_task == k and device_count == k:
        return 0
    if env.local_world_size * k > device_count:
        most = device_count // k
        raise DeviceError(
            f"{env.local_world_size} processes x model.gpus_per_replica={k} GPUs need "
            f"{env.local_world_size * k} GPUs on this node, but {device_count} are visible, so "
            f"rank {env.rank} (local rank {env.local_rank}) has no {k} GPUs of its own. HINT: "
            + (
                f"start {most} process(es) per node (torchrun --nproc_per_node={most}, or srun "
                f"--ntasks-per-node={most} --gpus-per-task={k})"
                if most
                else f"set model.gpus_per_replica={device_count} or less"
            )
            + "."
        )
    return env.local_rank * k


def replica_gpus(first: torch.device, gpus_per_replica: int) -> list[int]:
    """The GPU indices this process's model replica spans, starting at ``first``."""
    return list(range(first.index or 0, (first.index or 0) + gpus_per_replica))


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
