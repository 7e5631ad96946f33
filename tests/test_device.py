import pytest
import torch

from ddpinfer.device import DeviceError, resolve_device, set_cpu_threads
from ddpinfer.launch_env import LaunchEnv


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
    monkeypatch.setattr("ddpinfer.device.available_cores", lambda: 16)
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(None, 4) == 4 and torch.get_num_threads() == 4
        assert set_cpu_threads(3, 4) == 3
    finally:
        torch.set_num_threads(before)
