"""A re-run of a finished job: when no work is left and the output is as the last attempt left
it, there is nothing to merge, and the job ends in seconds instead of writing the output again.

The last attempt's manifest entry records the state of the output's files (size and
modification time, besides their sha256) and of the part files it was merged from (their names,
sizes and modification times, hashed). Both are compared, not re-hashed: hashing a
terabyte-sized output again is the half hour this saves. Any difference merges again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ddpinfer.rundir.parts import parts_dir


def output_state(run_dir: Path, files: tuple[Path, ...]) -> dict[str, Any]:
    """What the manifest records to recognise this output, and the parts it came from."""
    return {
        "files": {str(p.resolve()): _stat(p) for p in files if p.exists()},
        "parts": parts_digest(run_dir),
    }


def intact_output(run_dir: Path, files: tuple[Path, ...]) -> dict[str, Any] | None:
    """The last attempt's record of the output (rows, errors, sha256), if the output files
    and the parts are as it left them; else None."""
    try:
        attempts = json.loads((run_dir / "manifest.json").read_text())["attempts"]
        output = attempts[-1]["output"]
        recorded = output["state"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if not all(p.exists() for p in files):
        return None
    if recorded != json.loads(json.dumps(output_state(run_dir, files))):
        return None
    return {k: output[k] for k in ("rows", "errors", "sha256") if k in output}


def parts_digest(run_dir: Path) -> str:
    """sha256 of every file under the parts folder: its path there, size and mtime."""
    h = hashlib.sha256()
    root = parts_dir(run_dir)
    for path, (size, mtime) in sorted(_files_under(root)):
        h.update(f"{path}:{size}:{mtime}\n".encode())
    return h.hexdigest()


def _files_under(folder: Path):
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            for path, state in _files_under(Path(entry.path)):
                yield f"{entry.name}/{path}", state
        else:
            info = entry.stat(follow_symlinks=False)
            yield entry.name, (info.st_size, info.st_mtime_ns)


def _stat(path: Path) -> list[int]:
    if path.is_dir():  # a folder output (save_to_disk): its files' sizes and mtimes
        files = sorted(_files_under(path))
        return [sum(s for _, (s, _) in files), max((m for _, (_, m) in files), default=0)]
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]
