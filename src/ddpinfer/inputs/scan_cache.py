"""Rank 0's scan, kept in the run directory and reused while the inputs are unchanged.

A resume or a requeue of a job over a billion rows would otherwise read every record again
before any rank starts. The scan is stored with what it was computed from: every input file's
path, size and modification time, and the settings that change its result. Any difference
(an edited or appended file, another id field) scans again. Inputs whose records a task checks
against other files (image paths) are always scanned: those files may have changed.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

from ddpinfer.inputs.readers import InputSpec
from ddpinfer.inputs.scan import InputScan, scan
from ddpinfer.rundir.atomic import atomic_path

log = logging.getLogger("ddpinfer")

CACHE_NAME = "scan.pickle"
VERSION = 1
"""Raised when what a scan records changes, so that an older cache is not read."""


def cached_scan(spec: InputSpec, block_rows: int, run_dir: Path) -> tuple[InputScan, bool]:
    """``scan(spec, block_rows)``, from the run directory's cache when the inputs and settings
    are those it was stored for; and whether it was scanned now (then ``store`` it once the
    run directory is accepted: a refused run leaves it as it was)."""
    key = scan_key(spec, block_rows)
    if key is not None:
        stored = _load(run_dir / CACHE_NAME)
        if stored is not None and stored[0] == key:
            log.info("inputs unchanged since the last scan (%s): not read again", CACHE_NAME)
            return stored[1], False
    return scan(spec, block_rows), True


def store(spec: InputSpec, run_dir: Path, result: InputScan) -> None:
    """Keep ``result`` in the run directory for the next run of it."""
    key = scan_key(spec, result.block_rows)
    if key is not None:
        with atomic_path(run_dir / CACHE_NAME) as tmp, open(tmp, "wb") as f:
            pickle.dump((key, result), f, protocol=pickle.HIGHEST_PROTOCOL)


def scan_key(spec: InputSpec, block_rows: int) -> tuple | None:
    """What the scan's result depends on; None when it cannot be cached."""
    if spec.fields:
        return None
    try:
        files = tuple((str(f.resolve()), *_stat(f)) for f in spec.files)
    except OSError:
        return None
    settings = (spec.format, spec.text_field, spec.id_field, spec.skip_bad, spec.keep)
    return (VERSION, block_rows, settings, files)


def _stat(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns, info.st_ino  # a file replaced by a rename too


def _load(path: Path) -> tuple | None:
    try:
        with open(path, "rb") as f:
            stored = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError):
        return None
    return stored if isinstance(stored, tuple) and len(stored) == 2 else None
