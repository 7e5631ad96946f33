"""Multi-node without a shared filesystem: part files travel to rank 0 over the process group.

Only ranks that do not see rank 0's run directory (``plan.held_parts`` finds out which) send
their parts, in chunks of ``CHUNK_BYTES``, so rank 0's memory stays bounded whatever the sizes.
Parts travel after the last unit is done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from ddpinfer.launch import ProcessGroup
from ddpinfer.rundir.atomic import atomic_path
from ddpinfer.rundir.parts import file_path

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20


def collect_parts(group: ProcessGroup, run_dir: Path, mine: list[Path], shares: list[bool]):
    """Every rank that does not share rank 0's run directory sends it the part and fragment
    files it holds (``mine``): written in this attempt, or held from an earlier one."""
    senders = [r for r, shared in enumerate(shares) if not shared]
    if not senders:
        return
    if group.env.is_main:
        log.info("no shared filesystem with rank(s) %s: receiving their parts", senders)
        for rank in senders:
            _receive_parts(group, run_dir, rank)
    elif group.env.rank in senders:
        _send_parts(group, mine)


def _send_parts(group: ProcessGroup, paths: list[Path]) -> None:
    dist.send(torch.tensor([len(paths)], dtype=torch.int64), dst=0, group=group.control)
    for path in paths:
        name = path.name.encode()
        size = path.stat().st_size
        dist.send(torch.tensor([len(name), size], dtype=torch.int64), dst=0, group=group.control)
        dist.send(torch.frombuffer(bytearray(name), dtype=torch.uint8), 0, group.control)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                dist.send(torch.frombuffer(bytearray(chunk), dtype=torch.uint8), 0, group.control)


def _receive_parts(group: ProcessGroup, run_dir: Path, src: int) -> None:
    count = torch.zeros(1, dtype=torch.int64)
    dist.recv(count, src=src, group=group.control)
    buffer = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
    for _ in range(int(count.item())):
        meta = torch.zeros(2, dtype=torch.int64)
        dist.recv(meta, src=src, group=group.control)
        name_length, size = (int(x) for x in meta)
        name = torch.empty(name_length, dtype=torch.uint8)
        dist.recv(name, src=src, group=group.control)
        target = file_path(run_dir, name.numpy().tobytes().decode())
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            left = size
            while left:
                view = buffer[: min(left, CHUNK_BYTES)]
                dist.recv(view, src=src, group=group.control)
                f.write(view.numpy().tobytes())
                left -= view.numel()
