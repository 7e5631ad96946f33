"""Expand SLURM's compressed host lists (``gpu[01-04,07],cpu3``) without calling scontrol."""

from __future__ import annotations

import re

from ddpinfer.errors import UserError


class NodelistError(UserError):
    """A SLURM host list or tasks-per-node spec that cannot be read."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i for i in items if i]


def _expand_range(spec: str) -> list[str]:
    out = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)  # zero padding is kept: gpu[01-03] -> gpu01 gpu02 gpu03
            out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
        else:
            out.append(part)
    return out


def _expand_host(pattern: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [h for value in _expand_range(m.group(1)) for h in _expand_host(head + value + tail)]


def expand_nodelist(nodelist: str) -> list[str]:
    """``gpu[01-02,07],cpu3`` -> ``["gpu01", "gpu02", "gpu07", "cpu3"]``."""
    if nodelist.count("[") != nodelist.count("]"):
        raise NodelistError(f"unbalanced brackets in SLURM node list {nodelist!r}")
    return [host for item in _split_top_level(nodelist.strip()) for host in _expand_host(item)]


def first_host(nodelist: str) -> str:
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise NodelistError(f"empty SLURM node list {nodelist!r}")
    return hosts[0]


def expand_tasks_per_node(spec: str) -> list[int]:
    """``2(x3),1`` (SLURM_STEP_TASKS_PER_NODE) -> ``[2, 2, 2, 1]``."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise NodelistError(f"cannot read tasks per node {spec!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


if (
    __name__ == "__main__"
):  # used by the sbatch scripts: python -m ddpinfer.launch.nodelist "$NODELIST"
    import sys

    print(first_host(sys.argv[1]))
