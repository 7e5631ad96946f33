"""What each rank did, saved as ``<run dir>/stats/rank{N}.json`` (and the merge's as
``merge.json``) for the summary, the manifest and the benchmarks."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from ddpinfer.memory_use import peak_rss_mb
from ddpinfer.rundir.atomic import atomic_text


def save_rank_stats(
    run_dir: Path, rank: int, counts: dict[str, Any], seconds: float, device
) -> dict:
    """This rank's inference phase (model loaded to last part written): ``counts`` (inputs,
    tokens, errors...) with its host, device, duration and peak memory. Returns the record."""
    now = time.time()
    record = {
        **counts,
        "host": socket.gethostname(),
        "device": str(device),
        "seconds": seconds,
        "started_at": now - seconds,
        "finished_at": now,
        "peak_rss_mb": peak_rss_mb(),
    }
    _save(run_dir / "stats" / f"rank{rank}.json", record)
    return record


def save_merge_stats(run_dir: Path, seconds: float) -> None:
    _save(run_dir / "stats" / "merge.json", {"seconds": seconds, "peak_rss_mb": peak_rss_mb()})


def _save(path: Path, record: dict[str, Any]) -> None:
    with atomic_text(path) as f:
        json.dump(record, f)
