"""``<run dir>/manifest.json``: what produced the output, one entry per attempt.

Rank 0 appends an entry when a run ends: the resolved config, software versions, the launch
(launcher, job id, world size, each rank's device), the model's identity, the inputs'
fingerprint and row count, timings, throughput, and the output with its row count and sha256.
A resumed run appends another entry; the file is always replaced atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import re
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ddpinfer.config import Config
from ddpinfer.launch import LaunchEnv
from ddpinfer.results import summary
from ddpinfer.results.merge import file_sha256
from ddpinfer.rundir.atomic import atomic_text

SAMPLE_BYTES = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class Stopwatch:
    """Seconds spent in each phase of a run, in order."""

    def __init__(self) -> None:
        self.began = time.time()
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "transformers", "ddpinfer"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    found["driver"] = _driver_version() if torch.cuda.is_available() else None
    return found


def _driver_version() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def _sampled_digest(path: Path) -> str:
    """sha256 of a file's size, first and last MiB: cheap on multi-GB weights."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read())
    return h.hexdigest()


def model_identity(path: str, model: Any = None) -> dict[str, Any]:
    """The model's path, its hub revision when known, and a digest of its weight files."""
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    if revision is None and (match := re.search(r"/snapshots/([0-9a-f]{40})(/|$)", path)):
        revision = match.group(1)
    folder = Path(path).expanduser()
    weights = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    digest = None
    if weights:
        h = hashlib.sha256()
        for p in weights:
            h.update(f"{p.name}:{_sampled_digest(p)}\n".encode())
        digest = h.hexdigest()
    return {"path": path, "revision": revision, "weights_digest": digest}


def output_checksum(path: Path) -> str | None:
    """sha256 of the output file; for a folder, of its files' names and sha256s in order."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(path)}:{file_sha256(p)}\n".encode())
        return h.hexdigest()
    return None


def config_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config, with a custom task's extra keys (attributes beyond the schema)."""
    task = dataclasses.asdict(cfg.task)
    fields = {f.name for f in dataclasses.fields(cfg.task)}
    task.update({k: v for k, v in vars(cfg.task).items() if k not in fields})
    return {**dataclasses.asdict(cfg), "task": task}


def throughput(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    total = summary.totals(ranks)
    seconds = total["seconds"] or 1e-9
    padded = total["padded_tokens"]
    return {
        "inputs": total["rows"],
        "tokens": total["real_tokens"],
        "seconds": total["seconds"],
        "inputs_per_s": round(total["rows"] / seconds, 3),
        "tokens_per_s": round(total["real_tokens"] / seconds, 3),
        "padding_efficiency": round(total["real_tokens"] / padded, 4) if padded else None,
    }


def attempt(
    *,
    cfg: Config,
    env: LaunchEnv,
    clock: Stopwatch,
    ranks: list[dict[str, Any]],
    model: dict[str, Any],
    run_dir: Path,
    output: dict[str, Any],
) -> dict[str, Any]:
    """One attempt's entry. ``output``: path, format, rows, errors (and its sha256, if known)."""
    fingerprint_file = run_dir / "fingerprint.json"
    fingerprint = json.loads(fingerprint_file.read_text()) if fingerprint_file.is_file() else {}
    path = Path(output["path"])
    return {
        "started_at": _iso(clock.began),
        "finished_at": _iso(time.time()),
        "config": config_dict(cfg),
        "versions": versions(),
        "launcher": {
            "name": env.launcher,
            "job_id": env.job_id,
            "restart_count": env.restart_count,
        },
        "world_size": env.world_size,
        "devices": [
            {"rank": r, "host": s.get("host"), "device": s.get("device")}
            for r, s in enumerate(ranks)
        ],
        "model": model,
        "inputs": fingerprint.get("inputs", {}),
        "timings_s": dict(clock.laps),
        "throughput": throughput(ranks),
        "ranks": ranks,
        "errors": output["errors"],
        "output": {
            **output,
            "path": str(path.resolve()),
            # carried from the attempt that wrote it, when this one found it intact
            "sha256": output.get("sha256") or output_checksum(path),
        },
    }


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def append_attempt(run_dir: Path, entry: dict[str, Any]) -> Path:
    """Add ``entry`` to ``<run dir>/manifest.json`` (one entry per attempt), atomically."""
    path = run_dir / "manifest.json"
    attempts: list[dict[str, Any]] = []
    if path.is_file():
        try:
            attempts = json.loads(path.read_text())["attempts"]
        except (ValueError, KeyError, TypeError):
            attempts = []  # unreadable: start a new list rather than fail a finished run
    with atomic_text(path) as f:
        json.dump({"attempts": [*attempts, entry]}, f, indent=2, default=str)
    return path
