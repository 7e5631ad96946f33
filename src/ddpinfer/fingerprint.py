"""What a run directory's finished work was computed from, so a resume never mixes runs.

Stored as ``fingerprint.json`` on the first run; a later run in the same directory must match it
or stop with a message naming what changed. The world size and batch size are not part of it:
resuming on more or fewer GPUs, or with another batch size, is fine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ddpinfer.atomic import atomic_text
from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import InputSpec

SAMPLE_BYTES = 1 << 20


class FingerprintMismatch(UserError):
    """The run directory holds work from a run with other inputs, model or settings."""


def _file_digest(path: Path) -> str:
    """sha256 of size, first and last MiB: cheap on huge files, and catches edits and swaps."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read())
    return h.hexdigest()[:16]


def _model_digest(model_path: str) -> str:
    config = Path(model_path).expanduser() / "config.json"
    return _file_digest(config) if config.is_file() else "hub:" + model_path


def compute(cfg: Config, spec: InputSpec, model_path: str, num_rows: int, unit_size: int) -> dict:
    return {
        "inputs": {
            "path": str(spec.path.resolve()),
            "digest": _file_digest(spec.path),
            "rows": num_rows,
            "format": spec.format,
            "text_field": spec.text_field,
            "id_field": spec.id_field,
            # only when a task reads extra fields, so older run directories still match
            **({"fields": [name for name, _ in spec.fields]} if spec.fields else {}),
        },
        "model": {
            "path": model_path,
            "config_digest": _model_digest(model_path),
            "dtype": cfg.model.dtype,
            "max_length": cfg.model.max_length,
        },
        "task": dataclasses.asdict(cfg.task),
        "seed": cfg.seed,
        "unit_size": unit_size,
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_or_store(run_dir: Path, fingerprint: dict) -> bool:
    """Store the fingerprint, or check it against the stored one. True if one was stored before."""
    path = run_dir / "fingerprint.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = _differences(stored, fingerprint)
        if changed:
            raise FingerprintMismatch(
                f"{run_dir} holds finished work from a different run ({'; '.join(changed[:6])}). "
                "HINT: run.fresh=true discards it and starts over; run.name=<new name> (or "
                "another output.path) keeps it and runs in a new directory."
            )
        return True
    with atomic_text(path) as f:
        json.dump(fingerprint, f, indent=2)
    return False
