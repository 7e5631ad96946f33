"""The run directory: one folder that every rank agrees on without talking to the others.

It follows from the command alone (never from the clock, which differs between ranks started a
moment apart): run.dir if given, else run.root/run.name, else run.root/<name derived from
output.path; else from the SLURM job id (kept by a requeue); else from task, model and data>.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ddpinfer.config import Config


def derived_run_name(cfg: Config, job_id: str | None = None) -> str:
    if cfg.output.path:
        out = Path(cfg.output.path).expanduser().resolve()
        key, stem = str(out), out.name.split(".")[0]
    elif job_id:
        return f"slurm-{job_id}"
    else:
        key = "|".join(str(x) for x in (cfg.task.name, cfg.model.path, cfg.data.path))
        stem = cfg.task.name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "run"
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def resolve_run_dir(cfg: Config, job_id: str | None = None) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir).expanduser()
    return Path(cfg.run.root).expanduser() / (cfg.run.name or derived_run_name(cfg, job_id))
