"""What earlier attempts left in a run directory, and what of it still counts.

Two steps, in this order (``rundir.store`` states the rules they keep): ``inspect`` checks the
stored fingerprint against this run's and changes nothing, so a refusal leaves the directory as
it was; ``settle``, once every rank's checks have passed, drops the work of units whose rows
changed and what cannot be trusted, turns journals into fragments, stores this run's fingerprint
and says which rows are done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ddpinfer.plan import fingerprint
from ddpinfer.rundir import store
from ddpinfer.rundir.store import DoneRows

log = logging.getLogger("ddpinfer")


@dataclass(frozen=True)
class Resume:
    """What ``inspect`` found: nothing changed yet."""

    resumed: bool
    """Whether an earlier run left work and its fingerprint."""
    stale: tuple[int, ...] = ()
    """Units whose input rows changed since their work was computed."""
    fresh: bool = False
    """Discard every earlier work (run.fresh=true, or a fresh start an attempt left unfinished)."""


def inspect(run_dir: Path, new: dict, fresh: bool, first_attempt: bool) -> Resume:
    """Check the run directory against this run's fingerprint; raise when its work cannot be
    reused. Reads only."""
    if fresh and first_attempt:
        return Resume(False, fresh=True)
    stored = store.load_fingerprint(run_dir)
    if stored is None:
        if not (found := store.has_work(run_dir)):
            return Resume(False)
        if fresh:  # the work this job's first attempt started could not exist without one
            log.info(
                "run.fresh=true: an earlier attempt of this job started over and was stopped "
                "before it had discarded all earlier work: discarding the rest"
            )
            return Resume(False, fresh=True)
        raise fingerprint.refuse_parts_without_fingerprint(run_dir, found)
    return Resume(True, tuple(fingerprint.changed_units(run_dir, stored, new)))


def settle(
    run_dir: Path, resume: Resume, new: dict, units: list[range], unit_size: int
) -> DoneRows:
    """Make the run directory hold the work this run keeps (``rundir.store.settle``)."""
    if resume.fresh:
        log.info("run.fresh=true: discarding earlier work in %s", run_dir)
    held = set(store.unit_files(run_dir))
    if stale := sorted(set(resume.stale) & held):
        log.warning(
            "the input rows of %d finished work unit(s) changed since they were computed; "
            "recomputing them: unit(s) %s",
            len(stale),
            store.listed(stale),
        )
    return store.settle(run_dir, units, unit_size, new, resume.stale, resume.fresh)
