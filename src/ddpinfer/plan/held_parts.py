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
from ddpinfer.plan import fingerprint
from ddpinfer.rundir import store
from ddpinfer.rundir.store import DoneRows

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
) -> DoneRows:
    """On a node that does not share rank 0's run directory: the work its own run directory
    holds that was computed from this run's inputs, model and settings. What cannot be trusted
    (no fingerprint, another run's, rows changed, run.fresh) is deleted, journals are salvaged,
    then rank 0's fingerprint is stored beside the work this attempt will add (``rundir.store``
    keeps the order)."""
    discard, stale = _stale(run_dir, current, started_fresh)
    if discard or stale:
        log.warning(
            "%s unit(s) of work in this node's %s were not computed from this run's inputs, "
            "model and settings (or run.fresh=true): deleting them",
            "every" if discard else len(stale),
            run_dir,
        )
    unit_size = len(units[0]) if units else 1
    return store.settle(run_dir, units, unit_size, current, stale, fresh=discard)


def _stale(run_dir: Path, current: dict, started_fresh: bool) -> tuple[bool, list[int]]:
    """Whether to discard all of this node's work, else the units whose rows changed. Reads
    only."""
    if not store.has_work(run_dir):
        return False, []
    if started_fresh:
        return True, []
    try:
        stored = store.load_fingerprint(run_dir)
        if stored is None:
            return True, []
        return False, fingerprint.changed_units(run_dir, stored, current)
    except fingerprint.FingerprintMismatch:
        return True, []


def assign_held_parts(
    pending: list[int],
    done_rows: dict[int, list[int]],
    held: list[DoneRows | None],
    units: list[range],
) -> tuple[list[int], dict[int, list[int]], dict[int, list[int]]]:
    """Which rank sends which units' files from an earlier attempt (by rank: a whole unit by the
    lowest rank holding it; fragments by each rank holding some), and what is left to compute:
    the pending units and, for those half done, the rows done (rank 0's and the nodes' together).
    Fragments on a node that overlap rows known done elsewhere are not trusted: not sent."""
    senders: dict[int, list[int]] = {}
    still, rows_done = [], {}
    for unit in pending:
        whole = next((r for r, h in enumerate(held) if h and unit in h.whole), None)
        if whole is not None:
            senders.setdefault(whole, []).append(unit)
            continue
        rows = set(done_rows.get(unit, ()))
        for rank, h in enumerate(held):
            theirs = set(h.partial.get(unit, ())) if h else set()
            if theirs and not theirs & rows:
                rows |= theirs
                senders.setdefault(rank, []).append(unit)
        if rows != set(units[unit]):
            still.append(unit)
            if rows:
                rows_done[unit] = sorted(rows)
    return still, rows_done, senders
