"""What earlier attempts left in a run directory, and what of it still counts.

A unit is done when its part exists, or when its fragments hold each of its rows once. Before
that is decided: journals of windows an attempt left unfinished become fragments (``journal``),
files that do not open are dropped, and against the stored fingerprint, the parts and fragments
of units whose rows changed are dropped, so that they are computed again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from ddpinfer.plan import fingerprint
from ddpinfer.rundir.journal import journals, salvage
from ddpinfer.rundir.parts import drop_unreadable_parts, read_errors, unit_files

log = logging.getLogger("ddpinfer")


def reconcile(run_dir: Path, new: dict, unit_size: int) -> tuple[bool, dict[int, list[Path]]]:
    """Check the stored fingerprint against this run's and store this run's; turn journals into
    fragments; drop what cannot be read and the work of units whose rows changed. Returns
    whether an earlier run left a fingerprint, and the files of each unit that still count."""
    stored = fingerprint.load(run_dir)
    if stored is None and (unit_files(run_dir) or journals(run_dir)):
        raise fingerprint.refuse_parts_without_fingerprint(run_dir, len(unit_files(run_dir)))
    if broken := drop_unreadable_parts(run_dir):
        log.warning(
            "%d unit(s) had a part or fragment file that cannot be read (cut short?): "
            "recomputing those rows: unit(s) %s",
            len(broken),
            _listed(broken),
        )
    whole = {u for u, paths in unit_files(run_dir).items() if is_whole(paths)}
    if salvaged := salvage(run_dir, unit_size, whole):
        log.info(
            "kept the finished batches of %d unit(s) an earlier attempt left half done",
            len(salvaged),
        )
    files = unit_files(run_dir)
    stale = []
    if stored is not None:
        stale = sorted(set(fingerprint.changed_units(run_dir, stored, new)) & set(files))
    if stale:
        log.warning(
            "the input rows of %d finished work unit(s) changed since they were computed; "
            "recomputing them: unit(s) %s",
            len(stale),
            _listed(stale),
        )
        for unit in stale:  # before the new fingerprint: a crash in between loses nothing
            for path in files.pop(unit):
                path.unlink(missing_ok=True)
    fingerprint.store(run_dir, new)
    return stored is not None, files


def done_rows(files: dict[int, list[Path]], units: list[range]) -> dict[int, set[int] | None]:
    """For each unit with files: None when it is done (a part, or fragments covering it), else
    the rows its fragments hold. Fragments that overlap cannot be trusted: deleted."""
    done: dict[int, set[int] | None] = {}
    for unit, paths in files.items():
        if is_whole(paths):
            done[unit] = None
            continue
        rows = _fragment_rows(paths)
        if rows is None:
            log.warning("unit %d: its fragments overlap; recomputing it", unit)
            for path in paths:
                path.unlink(missing_ok=True)
            continue
        done[unit] = None if len(rows) == len(units[unit]) else rows
    return done


def is_whole(paths: list[Path]) -> bool:
    """Whether a unit's files are its part (not fragments)."""
    return len(paths) == 1 and ".f-" not in paths[0].name


def _fragment_rows(paths: list[Path]) -> set[int] | None:
    """The rows the fragments hold (results and errors); None when one is held twice."""
    rows: set[int] = set()
    count = 0
    for path in paths:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        held = table.column("row").to_pylist() + [e["row"] for e in read_errors(table)]
        rows.update(held)
        count += len(held)
    return rows if len(rows) == count else None


def _listed(units: list[int]) -> str:
    return ", ".join(map(str, units[:20])) + (" ..." if len(units) > 20 else "")
