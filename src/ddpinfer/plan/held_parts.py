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
from ddpinfer.plan import fingerprint, finished
from ddpinfer.rundir.journal import salvage
from ddpinfer.rundir.parts import drop_unreadable_parts, parts_dir, unit_files

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


def reconcile_held_parts(
    run_dir: Path, current: dict, started_fresh: bool, units: list[range]
) -> dict[int, list[int] | None]:
    """On a node that does not share rank 0's run directory: the work its own run directory
    holds that was computed from this run's inputs, model and settings, by unit: None for a
    whole unit, else the rows its fragments hold (journals are salvaged first). What cannot be
    trusted (no fingerprint, another run's, rows changed, run.fresh) is deleted, then rank 0's
    fingerprint is stored beside the work this attempt will add."""
    if broken := drop_unreadable_parts(run_dir):
        log.warning("%d unit(s) had a file that cannot be read (cut short?): deleted", len(broken))
    whole = {
        u
        for u, paths in unit_files(run_dir).items()
        if len(paths) == 1 and ".f-" not in paths[0].name
    }
    unit_size = len(units[0]) if units else 1
    salvage(run_dir, unit_size, whole)
    files = unit_files(run_dir)
    stale = _stale(run_dir, current, started_fresh, set(files))
    if stale:
        log.warning(
            "%d unit(s) of work in this node's %s were not computed from this run's inputs, "
            "model and settings (or run.fresh=true): deleting them",
            len(stale),
            parts_dir(run_dir),
        )
        for unit in stale:
            for path in files.pop(unit):
                path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint.store(run_dir, current)
    done = finished.done_rows(files, units)
    return {u: None if rows is None else sorted(rows) for u, rows in done.items()}


def _stale(run_dir: Path, current: dict, started_fresh: bool, held: set[int]) -> set[int]:
    if started_fresh or not held:
        return held
    try:
        stored = fingerprint.load(run_dir)
        if stored is None:
            return held
        return set(fingerprint.changed_units(run_dir, stored, current)) & held
    except fingerprint.FingerprintMismatch:
        return held


def assign_held_parts(
    pending: list[int],
    done_rows: dict[int, list[int]],
    held: list[dict[int, list[int] | None] | None],
    units: list[range],
) -> tuple[list[int], dict[int, list[int]], dict[int, list[int]]]:
    """Which rank sends which units' files from an earlier attempt (by rank: a whole unit by the
    lowest rank holding it; fragments by each rank holding some), and what is left to compute:
    the pending units and, for those half done, the rows done (rank 0's and the nodes' together).
    Fragments on a node that overlap rows known done elsewhere are not trusted: not sent."""
    senders: dict[int, list[int]] = {}
    still, rows_done = [], {}
    for unit in pending:
        whole = next((r for r, h in enumerate(held) if h and unit in h and h[unit] is None), None)
        if whole is not None:
            senders.setdefault(whole, []).append(unit)
            continue
        rows = set(done_rows.get(unit, ()))
        for rank, h in enumerate(held):
            theirs = set((h or {}).get(unit) or ())
            if theirs and not theirs & rows:
                rows |= theirs
                senders.setdefault(rank, []).append(unit)
        if len(rows) < len(units[unit]):
            still.append(unit)
            if rows:
                rows_done[unit] = sorted(rows)
    return still, rows_done, senders
