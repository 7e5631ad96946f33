import pytest
import torch

from ddpinfer.launch.device import DeviceError, replica_gpus, resolve_device, set_cpu_threads
from ddpinfer.launch.env import LaunchEnv


def env(local_rank=0, local_world_size=1):
    return LaunchEnv(
        launcher="torchrun",
        rank=local_rank,
        local_rank=local_rank,
        world_size=local_world_size,
        local_world_size=local_world_size,
    )


def test_each_process_gets_the_gpu_of_its_local_rank():
    device = resolve_device("auto", env(3, 4), cuda_available=True, device_count=4)
    assert device == torch.device("cuda", 3)


def test_cpu_when_asked_or_when_there_is_no_gpu():
    assert resolve_device("cpu", env(), cuda_available=True, device_count=8).type == "cpu"
    assert resolve_device("auto", env(), cuda_available=False).type == "cpu"


def test_more_processes_than_gpus_says_what_to_change():
    with pytest.raises(DeviceError, match=r"4 processes .* only 2 GPU\(s\).*--nproc_per_node=2"):
        resolve_device("auto", env(3, 4), cuda_available=True, device_count=2)


def test_cuda_asked_but_missing():
    with pytest.raises(DeviceError, match="device=cpu"):
        resolve_device("cuda", env(), cuda_available=False)


def test_cpu_threads_are_shared_between_the_processes_of_a_node(monkeypatch):
    monkeypatch.setattr("ddpinfer.launch.device.available_cores", lambda: 16)
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(None, 4) == 4 and torch.get_num_threads() == 4
        assert set_cpu_threads(3, 4) == 3
    finally:
        torch.set_num_threads(before)


def slurm_env(local_rank, local_world_size, gpus_per_task):
    return LaunchEnv(
        launcher="slurm",
        rank=local_rank,
        local_rank=local_rank,
        world_size=local_world_size,
        local_world_size=local_world_size,
        gpus_per_task=gpus_per_task,
    )


def test_replicas_of_k_gpus_take_consecutive_gpus_from_their_local_rank():
    # indices count after CUDA_VISIBLE_DEVICES: with 4,5,6,7 visible, cuda:2 is GPU 6
    first = resolve_device("auto", env(1, 2), 2, cuda_available=True, device_count=4)
    assert first == torch.device("cuda", 2)
    assert replica_gpus(first, 2) == [2, 3]
    assert resolve_device("cuda", env(3, 4), 2, cuda_available=True, device_count=8).index == 6


def test_a_task_bound_to_exactly_k_gpus_uses_them_all():
    device = resolve_device("auto", slurm_env(3, 4, 2), 2, cuda_available=True, device_count=2)
    assert device == torch.device("cuda", 0)
    # bound per node, not per task: every task sees all 8, so local rank decides
    device = resolve_device("auto", slurm_env(3, 4, None), 2, cuda_available=True, device_count=8)
    assert device == torch.device("cuda", 6)


def test_more_processes_times_k_than_gpus_says_what_to_set():
    with pytest.raises(DeviceError, match=r"4 processes x model.gpus_per_replica=2 .* 8 GPUs .*"):
        resolve_device("auto", env(0, 4), 2, cuda_available=True, device_count=6)
    with pytest.raises(DeviceError, match=r"HINT: start 3 process\(es\) per node"):
        resolve_device("auto", env(0, 4), 2, cuda_available=True, device_count=6)
    with pytest.raises(DeviceError, match=r"HINT: set model.gpus_per_replica=2 or less"):
        resolve_device("auto", env(0, 1), 4, cuda_available=True, device_count=2)


def test_k_gpus_per_replica_needs_cuda():
    with pytest.raises(DeviceError, match="model.gpus_per_replica=1"):
        resolve_device("auto", env(), 2, cuda_available=False)
