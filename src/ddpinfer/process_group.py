"""Start and stop torch.distributed, and the few collectives a run needs.

There is no collective inside the inference loop: ranks meet only at the start (init) and at the
end (the finish barrier), so a rank that is slow on one batch never stalls the others.
"""

from __future__ import annotations

import datetime
import logging

import torch
import torch.distributed as dist

from ddpinfer.launch_env import LaunchEnv

log = logging.getLogger(__name__)


class ProcessGroup:
    """The world's process group plus a gloo group for control traffic (gloo works on CPU
    tensors and supports ``monitored_barrier``, which names the ranks that did not arrive)."""

    def __init__(self, env: LaunchEnv, device: torch.device, timeout_s: float) -> None:
        self.env = env
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self._control: dist.ProcessGroup | None = None
        if not env.is_distributed:
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method=env.init_method,
            rank=env.rank,
            world_size=env.world_size,
            timeout=self.timeout,
            device_id=device if device.type == "cuda" else None,
        )
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        log.debug("process group up: backend=%s world_size=%d", backend, env.world_size)

    def barrier(self) -> None:
        """Wait for every rank; after ``run.timeout_s`` fail, naming the ranks that never came."""
        if self._control is not None:
            dist.monitored_barrier(self._control, timeout=self.timeout, wait_all_ranks=True)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
