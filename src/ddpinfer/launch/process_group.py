"""Start and stop torch.distributed, and the few collectives a run needs.

There is no collective inside the inference loop: ranks meet only at the start (init) and at the
end (the finish barrier), so a rank that is slow on one batch never stalls the others.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from ddpinfer.errors import UserError
from ddpinfer.launch.env import LaunchEnv
from ddpinfer.launch.stopping import PeerFailed, Preempted, Reason

log = logging.getLogger(__name__)

T = TypeVar("T")

FINISH_TIMEOUT_S = 120.0
"""Timeout of the collectives after the loop: every rank is at the finish line by then (the
liveness check saw to it), so one that takes longer means a peer is gone, not slow."""


def connect_store(env: LaunchEnv, timeout: datetime.timedelta, purpose: str) -> dist.Store:
    """A client of the rendezvous store (rank 0 hosts it unless torchrun's agent does), with
    keys under this attempt's own prefix: torchrun's store outlives a restarted worker group,
    and keys left by the group before (gloo's peer addresses, say) must not be read as new."""
    host = env.rank == 0 and not env.store_hosted_by_agent and purpose == "pg"
    store = dist.TCPStore(
        env.store_addr,
        env.store_port,
        world_size=env.world_size if host else None,
        is_master=host,
        timeout=timeout,
        wait_for_workers=False,
    )
    return dist.PrefixStore(f"ddpinfer/attempt{env.restart_count}/{purpose}/", store)


class ProcessGroup:
    """The world's process group plus a gloo group for control traffic (small objects and
    part files travel as CPU tensors, which NCCL cannot carry)."""

    def __init__(self, env: LaunchEnv, device: torch.device, timeout_s: float) -> None:
        self.env = env
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self._control: dist.ProcessGroup | None = None
        self._finish: dist.ProcessGroup | None = None
        if not env.is_distributed:
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            store=connect_store(env, self.timeout, "pg"),
            rank=env.rank,
            world_size=env.world_size,
            timeout=self.timeout,
            device_id=device if device.type == "cuda" else None,
        )
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
        finish_s = min(timeout_s, FINISH_TIMEOUT_S)
        self._finish = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=finish_s))
        log.debug("process group up: backend=%s world_size=%d", backend, env.world_size)

    @property
    def control(self) -> dist.ProcessGroup | None:
        """The gloo group for control traffic; None in a world of one."""
        return self._control

    def _group(self, finishing: bool) -> dist.ProcessGroup | None:
        return self._finish if finishing else self._control

    def broadcast_object(self, obj: object, finishing: bool = False) -> object:
        """Rank 0's ``obj``, on every rank. ``finishing``: after the loop, with a short timeout."""
        if self._control is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._group(finishing))
        return box[0]

    def all_gather_object(self, obj: object, finishing: bool = False) -> list[object]:
        """Every rank's small ``obj``, by rank. For a few bytes per rank only, never results."""
        if self._control is None:
            return [obj]
        out: list[object] = [None] * self.env.world_size
        dist.all_gather_object(out, obj, group=self._group(finishing))
        return out

    def close(self) -> None:
        # No reference may outlive destroy_process_group: a process group destroyed only at
        # interpreter exit can abort the process ("terminate called without an active exception").
        self._control = self._finish = None
        if dist.is_initialized():
            dist.destroy_process_group()


class PeerError(UserError):
    """Another rank found a problem in the set-up; that rank reports it."""


def agreed(group: ProcessGroup, step: Callable[[], T]) -> T:
    """Run ``step`` on every rank; if it raised anywhere, raise on every rank: the rank that
    raised re-raises its own error, the others name it. Whatever ``step`` raised, every rank
    takes part in the collective first, so none is left waiting in it for a rank that gave up
    (the waiting rank would only see its peer's connection close)."""
    result, error, report = None, None, None
    try:
        result = step()
    except UserError as e:
        error, report = e, ("user", str(e))
    except Preempted as e:  # a stop signal before any work: the others stop as preempted
        error, report = e, ("stopped", f"was stopped: {e}")
    except Exception as e:
        error, report = e, ("unexpected", f"unexpected error: {type(e).__name__}: {e}")
    reports = group.all_gather_object(report)
    if error is not None:
        raise error
    failed = [(rank, r) for rank, r in enumerate(reports) if r is not None]
    if failed:
        rank, (kind, message) = failed[0]
        if kind == "user":
            raise PeerError(f"rank {rank} found a problem: {message}")
        if kind == "stopped":
            raise PeerFailed(f"rank {rank} {message}", Reason.PREEMPTED)
        raise PeerFailed(f"rank {rank} failed: {message}")
    return result  # type: ignore[return-value]


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` came out of a collective whose peer closed its connection or never
    came (gloo raises a plain RuntimeError naming itself; NCCL, a DistError)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and "gloo" in str(error)
