"""The environment a rank's vLLM engine starts in (its processes copy it): without the launcher's
variables, its threads on the rank's share of the cores unless the user chose a binding, and the
rank's own environment back afterwards."""

import os

import torch

from ddpinfer.compute.engines.vllm_engine import _engine_environment
from ddpinfer.launch import LaunchEnv

RANK_1_OF_2 = LaunchEnv(launcher="torchrun", rank=1, local_rank=1, world_size=2, local_world_size=2)


def test_a_rank_binds_its_engine_to_its_share_of_the_cores_without_the_launchers_variables(
    monkeypatch,
):
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    with _engine_environment(RANK_1_OF_2, torch.device("cpu"), 1):
        assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "2,3"
        assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
    assert os.environ["RANK"] == "1" and os.environ["MASTER_PORT"] == "29500"


def test_a_binding_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    with _engine_environment(RANK_1_OF_2, torch.device("cpu"), 1):
        assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
