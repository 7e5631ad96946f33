import pytest

from ddpinfer.launch.env import LaunchError, detect


def test_plain_python_is_a_world_of_one():
    env = detect({})
    assert (env.launcher, env.rank, env.world_size, env.is_main, env.is_distributed) == (
        "single",
        0,
        1,
        True,
        False,
    )


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
    assert (env.node_rank, env.restart_count) == (1, 2)
    assert (env.store_addr, env.store_port, env.store_hosted_by_agent) == ("h", 1, False)
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


SRUN = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_srun_task_is_a_rank():
    env = detect(SRUN)
    assert env.launcher == "slurm"
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    assert env.node_rank == 1 and env.job_id == "4242"
    assert (env.store_addr, env.store_port) == ("gpu07", 24242)


def test_port_follows_the_job_id_and_explicit_master_wins():
    other = detect({**SRUN, "SLURM_JOB_ID": "4243"})
    assert other.store_port == 24243
    env = detect({**SRUN, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert (env.store_addr, env.store_port) == ("head", 1234)


def test_the_batch_script_itself_is_not_a_rank():
    # sbatch's batch step sets SLURM_PROCID=0 and SLURM_NTASKS, but no step id.
    environ = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    env = detect({**environ, "SLURM_PROCID": "0"})
    assert env.launcher == "single" and env.world_size == 1 and env.job_id == "4242"


def test_torchrun_under_srun_with_one_task_per_node_is_fine():
    env = detect(
        {
            **SRUN,
            "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
            "RANK": "6",
            "LOCAL_RANK": "2",
            "WORLD_SIZE": "8",
            "LOCAL_WORLD_SIZE": "4",
        }
    )
    assert env.launcher == "torchrun" and env.rank == 6 and env.job_id == "4242"


def test_srun_torchrun_with_several_tasks_per_node_is_refused():
    with pytest.raises(LaunchError, match=r"2 tasks on this node.*srun --ntasks-per-node=1"):
        detect({**SRUN, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "8"})


def test_ntasks_that_disagrees_with_the_started_tasks_is_refused():
    with pytest.raises(LaunchError, match=r"SLURM_NTASKS=8 but srun started 4 tasks"):
        detect({**SRUN, "SLURM_NTASKS": "8"})


def test_uneven_tasks_per_node():
    env = detect(
        {
            **SRUN,
            "SLURM_STEP_TASKS_PER_NODE": "3,1",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "1",
        }
    )
    assert env.local_world_size == 1


def test_gpus_bound_per_task_are_read_under_srun():
    assert detect(SRUN).gpus_per_task is None
    assert detect({**SRUN, "SLURM_GPUS_PER_TASK": "2"}).gpus_per_task == 2
    assert detect({**SRUN, "SLURM_GPUS_PER_TASK": "a100:4"}).gpus_per_task == 4
    with pytest.raises(LaunchError, match="SLURM_GPUS_PER_TASK='lots'"):
        detect({**SRUN, "SLURM_GPUS_PER_TASK": "lots"})


def test_a_requeued_job_is_not_a_first_attempt_under_any_launcher():
    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "77"}
    assert detect(torchrun).is_first_attempt and detect(torchrun).job_key == "77"
    # torchrun started by the sbatch script of a requeued job: torchrun's count is 0 again.
    requeued = detect({**torchrun, "SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"})
    assert (requeued.restart_count, requeued.requeue_count) == (0, 1)
    assert not requeued.is_first_attempt and requeued.job_key == "9"
    assert not detect({**torchrun, "TORCHELASTIC_RESTART_COUNT": "1"}).is_first_attempt
    assert not detect({"SLURM_RESTART_COUNT": "2"}).is_first_attempt  # the batch script itself


@pytest.mark.parametrize(
    "environ, attempt",
    [
        ({}, 0),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_RESTART_COUNT": "2"}, 2),
        (  # torchrun in a requeued SLURM job: its restarts begin again at 0
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "SLURM_RESTART_COUNT": "1"},
            1,
        ),
        ({**SRUN, "SLURM_RESTART_COUNT": "1"}, 1),  # srun: one count, not counted twice
    ],
)
def test_the_attempt_counts_torchrun_restarts_and_slurm_requeues(environ, attempt):
    assert detect(environ).attempt == attempt


def test_the_job_key_is_one_no_other_live_job_shares():
    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    # torchrun --master_port (static rendezvous) and c10d without --rdzv-id: every job is "none"
    assert detect({**torchrun, "TORCHELASTIC_RUN_ID": "none"}).job_key is None
    assert detect(torchrun).job_key is None
    # two srun steps of one allocation run side by side: the step tells them apart
    steps = [detect({**SRUN, "SLURM_JOB_ID": "9", "SLURM_STEP_ID": s}).job_key for s in "01"]
    assert steps == ["9.0", "9.1"]
    in_step = {**torchrun, "SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "TORCHELASTIC_RUN_ID": "x"}
    assert detect(in_step).job_key == "9.0"  # torchrun inside an srun step: the step's
