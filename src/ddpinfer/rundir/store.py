"""The run directory's rules. Every change a run makes to the finished work of a run directory
(parts, fragments, journals, ``fingerprint.json``, a fresh start) before computing goes through
this module; the compute loop only adds files (``part_writer``) and deletes its own window's
journal once that window's units are written.

The invariants, which the code below keeps in this order:

1. **A refused or failed preflight changes nothing.** Checking (``has_work``,
   ``load_fingerprint`` and the comparison in ``plan.fingerprint``) only reads. ``settle``, which
   changes files, runs after every check of every rank has passed.
2. **The fingerprint goes before the parts, and comes back only after them.** A fresh start
   deletes ``fingerprint.json`` (and makes that durable) before anything in ``parts/``;
   ``settle`` writes the new fingerprint last. So finished work without a fingerprint can only
   be what an interrupted fresh start had not deleted yet: a later attempt of that job (still
   ``run.fresh=true``) finishes the fresh start; any other run refuses it.
3. **A unit is done exactly when the rows of its part, or of its fragments together, are its
   rows**, each once. A file that fails its checksums, holds rows of another unit, or repeats a
   row already held is deleted and those rows are computed again; fragments beside a whole part
   are deleted (they are redundant, and would come back if the part were dropped later).
4. **Nothing is deleted that a live job of this run may still write.** ``settle`` runs on rank 0
   (or on the one checking rank of a node with its own run directory) under the run lock,
   before any rank computes. Journals are salvaged then, never while a window may append.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpinfer.errors import UserError
from ddpinfer.rundir.atomic import atomic_text, fsync_dir, sweep_temporaries
from ddpinfer.rundir.journal import journals, salvage
from ddpinfer.rundir.parts import held_rows, is_part, parts_dir, unit_files, unit_folders

log = logging.getLogger("ddpinfer")

FINGERPRINT = "fingerprint.json"
OWN_FOLDERS = ("parts", "stats", "logs")
"""The folders of a run directory that ddpinfer writes in. Another run's directory may sit
below this one (run.dir=runs, beside runs/<name>): it is not ours to sweep."""


class FingerprintMismatch(UserError):
    """The run directory holds work from a run with other inputs, model or settings."""


@dataclass(frozen=True)
class DoneRows:
    """What earlier attempts finished: the units done whole, and for the units half done the
    rows they finished. A unit in neither has nothing done."""

    whole: frozenset[int] = frozenset()
    partial: dict[int, frozenset[int]] = field(default_factory=dict)

    def pending(self, num_units: int) -> list[int]:
        return [u for u in range(num_units) if u not in self.whole]

    def rows_left(self, units: list[range]) -> int:
        return sum(len(units[u]) - len(self.partial.get(u, ())) for u in self.pending(len(units)))


def load_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The stored fingerprint; None when there is none. One that cannot be read (truncated by
    a full disk, edited by hand) says nothing about the finished work: refused."""
    path = run_dir / FINGERPRINT
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError(f"a JSON {type(stored).__name__}, not an object")
        return stored
    except (OSError, ValueError) as e:
        raise FingerprintMismatch(
            f"{path} cannot be read ({type(e).__name__}: {e}), so what the finished work in "
            f"{run_dir} was computed from is unknown. HINT: run.fresh=true discards that work "
            "and starts over; run.name=<new name> (or another output.path) keeps it and runs "
            "in a new directory."
        ) from None


def sweep_run_dir(run_dir: Path) -> list[Path]:
    """Delete the temporaries that writers of this run directory left when they died (call
    it under the run lock): in the directory itself and in its own folders, nowhere deeper."""
    swept = sweep_temporaries(run_dir)
    for name in OWN_FOLDERS:
        if (run_dir / name).is_dir():
            swept += sweep_temporaries(run_dir / name)
    for folder in unit_folders(run_dir):
        swept += sweep_temporaries(folder)
    return swept


def has_work(run_dir: Path) -> int:
    """How many part, fragment and journal files the run directory holds."""
    return sum(map(len, unit_files(run_dir).values())) + len(journals(run_dir))


def start_fresh(run_dir: Path) -> None:
    """Discard the finished work: the fingerprint first (durably), then the parts, then the
    manifest (its attempts' work is gone). Interrupted anywhere, what is left is either the
    old work under its fingerprint, or work without one (refused, or finished discarding)."""
    fingerprint = run_dir / FINGERPRINT
    if fingerprint.exists():
        fingerprint.unlink()
        fsync_dir(run_dir)
    shutil.rmtree(parts_dir(run_dir), ignore_errors=True)
    (run_dir / "manifest.json").unlink(missing_ok=True)


def settle(
    run_dir: Path,
    units: list[range],
    unit_size: int,
    fingerprint: dict[str, Any],
    stale: Iterable[int] = (),
    fresh: bool = False,
) -> DoneRows:
    """Make the run directory hold exactly the work this run keeps, then store its fingerprint:
    discard everything (``fresh``), or the work of the ``stale`` units (their rows changed);
    drop what cannot be trusted; turn journals into fragments. Returns what is done."""
    if fresh:
        start_fresh(run_dir)
    stale = set(stale)
    held: dict[int, set[int]] = {}
    whole: set[int] = set()
    dropped: set[int] = set()
    for unit, paths in unit_files(run_dir).items():
        if unit in stale or unit >= len(units):
            _delete(paths)
            continue
        kept, bad = _trusted(paths, units[unit])
        if bad:
            dropped.add(unit)
        if kept and is_part(next(iter(kept))):
            whole.add(unit)
        elif kept:
            held[unit] = set().union(*(set(rows) for rows in kept.values()))
    if dropped:
        log.warning(
            "%d unit(s) had a part or fragment file that cannot be read (cut short?) or "
            "trusted (its checksum does not match): recomputing those rows: unit(s) %s",
            len(dropped),
            listed(sorted(dropped)),
        )
    if salvaged := salvage(run_dir, unit_size, whole | stale, held):
        log.info(
            "kept the finished batches of %d unit(s) an earlier attempt left half done",
            len(salvaged),
        )
    store_fingerprint(run_dir, fingerprint)  # last: the work it vouches for is settled
    done = {u for u, rows in held.items() if rows == set(units[u])}
    partial = {u: frozenset(rows) for u, rows in held.items() if rows and u not in done}
    return DoneRows(frozenset(whole | done), partial)


def _trusted(paths: list[Path], unit: range) -> tuple[dict[Path, list[int]], bool]:
    """A unit's files that can be trusted, with their rows, the part first; and whether any was
    deleted. A part must hold exactly the unit's rows; fragments only rows of the unit, none
    twice. A part makes the fragments beside it redundant."""
    kept: dict[Path, list[int]] = {}
    seen: set[int] = set()
    bad = False
    for path in paths:
        rows = held_rows(path)
        ok = rows is not None and len(set(rows)) == len(rows) and not set(rows) & seen
        ok = ok and set(rows) <= set(unit) and (not is_part(path) or len(rows) == len(unit))
        if ok and not (kept and is_part(next(iter(kept)))):
            kept[path] = rows  # type: ignore[assignment]
            seen.update(rows)  # type: ignore[arg-type]
            continue
        if not ok:
            log.warning("%s: cannot be trusted (cut short, or changed since it was written)", path)
            bad = True
        path.unlink(missing_ok=True)
    return kept, bad


def store_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_text(run_dir / FINGERPRINT) as f:
        json.dump(fingerprint, f, indent=2)


def _delete(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def listed(units: list[int]) -> str:
    return ", ".join(map(str, units[:20])) + (" ..." if len(units) > 20 else "")
