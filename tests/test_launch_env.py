import pytest

from ddpinfer.launch_env import LaunchError, detect


def test_plain_python_is_a_world_of_one():
    env = detect({})
    assert (env.launcher, env.rank, env.world_size, env.is_main, env.is_distributed) == (
        "single",
        0,
        1,
        True,
        False,
    )
    assert env.init_method is None


def test_torchrun_variables():
    env = detect(
        {
            "RANK": "5",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
            "TORCHELASTIC_RESTART_COUNT": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1",
        }
    )
    assert env.launcher == "torchrun"
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (5, 1, 8, 4)
    assert (env.node_rank, env.restart_count, env.init_method) == (1, 2, "env://")
    assert not env.is_main and env.is_distributed


def test_torchrun_wins_inside_a_slurm_allocation():
    env = detect(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "SLURM_JOB_ID": "77",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert env.launcher == "torchrun" and env.world_size == 2 and env.job_id == "77"


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "rank 2 is outside world size 2"),
        (
            {"RANK": "1", "LOCAL_RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            "local rank 3 is outside local world size 2",
        ),
    ],
)
def test_inconsistent_variables_are_named(environ, message):
    with pytest.raises(LaunchError, match=message):
        detect(environ)
