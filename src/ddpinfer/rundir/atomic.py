"""Write files so that a reader sees either nothing or the whole file, never a truncated one."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMPORARY = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{32}$")
"""The names ``atomic_path`` and ``atomic_dir`` give their temporaries."""


def sweep_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the temporaries a writer that died left in ``folder``, not in the folders below
    it (only those of ``name`` when given: ``folder`` is not all ours). Call it only while no
    other writer can be at work there: under the run directory's lock. Returns what was
    deleted."""
    found = folder.glob(f".{name}.*" if name else ".*")
    swept = []
    for path in found:
        if not TEMPORARY.match(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        swept.append(path)
    return swept


@contextlib.contextmanager
def atomic_path(path: Path, before_rename: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto it
    (``before_rename`` runs just before, and may refuse the write by raising).

    The temporary name is random, as ``tempfile``'s are, not derived from the PID: PIDs repeat
    across containers on different nodes, and two writers of one file must never share a
    temporary. (Not ``mkstemp`` itself: its 0600 mode would pass to the final file.)"""
    if not path.parent.is_dir():  # a new folder: its name, too, durable before the file's
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent.parent)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success its files are fsynced and the folder
    takes the place of ``path`` (whatever was there before is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
        replaced = path.exists()
        if replaced:
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if replaced:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make the names in ``folder`` durable (a rename, a new or deleted file), as ``fsync`` on
    a file makes its bytes durable: without it a crash can bring back a deleted name or lose a
    new one, whatever the file's own fsync said."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
