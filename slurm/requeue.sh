# Sourced by the sbatch scripts: wait for srun; on SIGUSR1 (the time limit is near, from
# `#SBATCH --signal=B:USR1@120`) or SIGTERM (preemption), stop the ranks and requeue the job.
#
#   srun ... &
#   wait_and_requeue_on_signal $!

wait_and_requeue_on_signal() {
    local srun_pid=$1 signal_seen=
    trap 'signal_seen=USR1' USR1
    trap 'signal_seen=TERM' TERM
    local status=0
    wait "$srun_pid" || status=$?
    if [ -n "$signal_seen" ]; then
        echo "ddpinfer: SIG$signal_seen: stopping the ranks after their current batch"
        # SIGTERM to every process of the job's steps (not to srun, which would kill them):
        # ranks stop with exit code 75 and keep their finished work.
        scancel --signal=TERM "$SLURM_JOB_ID" || true
        status=0
        wait "$srun_pid" || status=$?
        echo "ddpinfer: ranks stopped (srun exit $status); requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" || true
        exit 75
    fi
    return "$status"
}
