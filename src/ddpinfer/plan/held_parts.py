"""Which ranks share rank 0's run directory, and the finished work nodes without it still hold.

Whether a rank shares rank 0's run directory is found out, not assumed: rank 0 drops a probe file
in its run directory and every rank looks for it in its own. What a node without it finished in
an attempt that then failed or was preempted stays in the node's own run directory, under a copy
of rank 0's fingerprint: the next attempt checks that copy like rank 0 checks its own, does not
recompute the units the node still holds, and the node sends them with the rest at the end
(``results.transfer``).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from ddpinfer.launch import ProcessGroup
from ddpinfer.parts import drop_unreadable_parts, finished_units, part_path, parts_dir
from ddpinfer.plan import fingerprint

log = logging.getLogger(__name__)


def ranks_sharing_run_dir(group: ProcessGroup, run_dir: Path, setting: str) -> list[bool]:
    """For each rank, whether it sees rank 0's run directory (output.shared_fs=auto|true|false)."""
    world = group.env.world_size
    if setting == "true" or world == 1:
        return [True] * world
    if setting == "false":
        return [True] + [False] * (world - 1)
    # named as a temporary, so that a probe left by a process that died is swept like one
    probe = run_dir / f".shared-fs-probe.tmp-{uuid.uuid4().hex}" if group.env.is_main else None
    if probe is not None:
        probe.touch()
    name = group.broadcast_object(probe.name if probe else None)
    try:
        seen = (run_dir / str(name)).exists()
        return [bool(x) for x in group.all_gather_object(seen)]
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)


def reconcile_held_parts(run_dir: Path, current: dict, started_fresh: bool) -> list[int]:
    """On a node that does not share rank 0's run directory: the finished units its own run
    directory holds that were computed from this run's inputs, model and settings. Parts that
    cannot be trusted (no fingerprint, another run's, rows changed, run.fresh) are deleted, then
    rank 0's fingerprint is stored beside the parts this attempt will add."""
    if broken := drop_unreadable_parts(run_dir):
        log.warning("%d part file(s) cannot be read (cut short?): deleted", len(broken))
    held = finished_units(run_dir)
    stored = fingerprint.load(run_dir)
    stale: set[int] = set()
    if started_fresh or (held and stored is None):
        stale = held
    elif stored is not None and held:
        try:
            stale = set(fingerprint.changed_units(run_dir, stored, current)) & held
        except fingerprint.FingerprintMismatch:
            stale = held
    if stale:
        log.warning(
            "%d finished unit(s) in this node's %s were not computed from this run's inputs, "
            "model and settings (or run.fresh=true): deleting them",
            len(stale),
            parts_dir(run_dir),
        )
        for unit in stale:
            part_path(run_dir, unit).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint.store(run_dir, current)
    return sorted(held - stale)


def assign_held_parts(pending: list[int], held: list[list[int] | None]) -> dict[int, list[int]]:
    """Which rank sends which pending unit that a node already holds (by rank; the lowest rank
    holding a unit sends it)."""
    todo, senders = set(pending), {}
    for rank, units in enumerate(held):
        mine = sorted(todo.intersection(units or ()))
        if mine:
            senders[rank] = mine
            todo.difference_update(mine)
    return senders
