"""Where this process sits and how the ranks hold together: the launcher's environment, the
device, the process group, heartbeats and failure notices, stop signals, and the run directory
with its lock and logs."""

from ddpinfer.launch.device import pin_device, replica_gpus, resolve_device, set_cpu_threads
from ddpinfer.launch.env import LaunchEnv, detect
from ddpinfer.launch.liveness import Liveness
from ddpinfer.launch.logs import FILE_ONLY, setup_logging
from ddpinfer.launch.process_group import (
    ProcessGroup,
    agreed,
    connect_store,
    is_collective_failure,
)
from ddpinfer.launch.run_dir import resolve_run_dir
from ddpinfer.launch.run_lock import take_run_lock
from ddpinfer.launch.stopping import PeerFailed, Preempted, Stalled, StopSignals
from ddpinfer.launch.watch import Watch

__all__ = [
    "FILE_ONLY",
    "LaunchEnv",
    "Liveness",
    "PeerFailed",
    "Preempted",
    "ProcessGroup",
    "Stalled",
    "StopSignals",
    "agreed",
    "connect_store",
    "detect",
    "pin_device",
    "replica_gpus",
    "resolve_device",
    "resolve_run_dir",
    "set_cpu_threads",
    "setup_logging",
    "is_collective_failure",
    "take_run_lock",
    "Watch",
]
