"""Part files: each finished work unit is one JSONL file under ``<run dir>/parts/``.

A part holds one line per input, ``{"row": <row>, "id": ..., <task fields>}``, in row order, and is
written atomically: a unit is done exactly when its part file exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ddpinfer.atomic import atomic_text

PART_NAME = re.compile(r"^unit-(\d{6,})\.jsonl$")


def parts_dir(run_dir: Path) -> Path:
    return run_dir / "parts"


def part_path(run_dir: Path, unit: int) -> Path:
    return parts_dir(run_dir) / f"unit-{unit:06d}.jsonl"


def write_part(run_dir: Path, unit: int, records: Iterable[dict[str, Any]]) -> Path:
    path = part_path(run_dir, unit)
    with atomic_text(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def finished_units(run_dir: Path) -> set[int]:
    folder = parts_dir(run_dir)
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.iterdir() if (m := PART_NAME.match(p.name))}


def read_part(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
