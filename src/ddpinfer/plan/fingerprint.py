"""What a run directory's finished work was computed from, so a resume never mixes runs.

Stored as ``fingerprint.json`` on the first run; a later run in the same directory must match it
or stop with a message naming what changed. The world size and batch size are not part of it:
resuming on more or fewer GPUs, or with another batch size, is fine.

- Inputs: a content hash of every record's id and text, made during rank 0's scan (which reads
  every record anyway), whole and per work unit. A resume over an input whose rows were edited
  recomputes just the units whose rows changed; an input with another row count, format or
  field is refused (the units would no longer line up).
- Model: every file of the model folder by name and size; small files (config, tokenizer, the
  shards' index) hashed whole, weight files by their safetensors header and sampled chunks,
  so a new checkpoint saved over the old one is noticed without reading gigabytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from ddpinfer.config import Config
from ddpinfer.inputs import InputScan, InputSpec
from ddpinfer.inputs import digests as content_digest
from ddpinfer.plan.task_needs import custom_task_source
from ddpinfer.rundir.store import FINGERPRINT, FingerprintMismatch

WHOLE_FILE_BYTES = 1 << 20
SAMPLES, SAMPLE_BYTES = 16, 64 << 10
MAX_HEADER_BYTES = 100 << 20
UNIT_KEY = "unit_digests"
BLOCK_KEY = "digest_block_rows"
"""Rows per digest block the unit digests were made from (so a re-run hashes them alike)."""


def _weights_digest(path: Path, size: int) -> str:
    """sha256 of the size, the safetensors header (tensor names, shapes, offsets) and
    ``SAMPLES`` chunks spread over the file: another checkpoint differs in every chunk."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            length = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(length, MAX_HEADER_BYTES)))
        for i in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    if size > WHOLE_FILE_BYTES:
        return _weights_digest(path, size)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _model_folder(model_path: str) -> Path | None:
    folder = Path(model_path).expanduser()
    if folder.is_dir():
        return folder
    try:  # a hub id: its snapshot in the local cache, if there is one
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception:
        return None


def model_files(model_path: str) -> dict[str, str]:
    """Digest of each file in the model folder (two levels deep; hidden files, __pycache__ and
    Markdown left out), by its path in the folder."""
    folder = _model_folder(model_path)
    if folder is None:
        return {"hub id (not in the local cache)": model_path}
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        skipped = any(p.startswith(".") or p == "__pycache__" for p in relative.parts)
        if len(relative.parts) > 2 or skipped:
            continue
        if path.is_file() and path.suffix.lower() != ".md":
            files[str(relative)] = file_digest(path)
    return files


def unit_digests(scan: InputScan, unit_size: int) -> list[str]:
    """One digest per work unit, from the digests of the blocks of rows it covers (a block
    shared by two units, where the unit size is not a multiple of the block, counts for both)."""
    blocks, size = scan.block_digests, scan.block_rows
    digests = []
    for start in range(0, scan.num_rows, unit_size):
        stop = min(start + unit_size, scan.num_rows)
        covered = blocks[start // size : (stop - 1) // size + 1]
        digests.append(hashlib.sha256("|".join(covered).encode()).hexdigest()[:16])
    return digests


def compute(
    cfg: Config, spec: InputSpec, model_path: str, scan: InputScan, unit_size: int
) -> dict[str, Any]:
    return {
        "inputs": {
            **_input_paths(spec),
            "rows": scan.num_rows,
            "format": spec.format,
            "text_field": spec.text_field,
            "id_field": spec.id_field,
            # only when a task reads extra fields, so older run directories still match
            **({"fields": [name for name, _ in spec.fields]} if spec.fields else {}),
            "digest": scan.digest,
            "digest_scheme": content_digest.SCHEME,
        },
        "model": {
            "path": model_path,
            "files": model_files(model_path),
            "dtype": cfg.model.dtype,
            "max_length": cfg.model.max_length,
        },
        "task": task_settings(cfg.task),
        "seed": cfg.seed,
        # the part files hold the kept fields; only when set, so older run directories match
        **({"output": {"keep_fields": list(spec.keep)}} if spec.keep else {}),
        "unit_size": unit_size,
        UNIT_KEY: unit_digests(scan, unit_size),
        BLOCK_KEY: scan.block_rows,
    }


RESOURCE_SETTINGS = ("gpu_memory_utilization", "kv_cache_gib", "max_num_seqs", "enforce_eager")
"""task.vllm settings that change how much memory and time the engine takes, not its results:
a re-run may change them."""


def task_settings(task: Any) -> dict[str, Any]:
    """The task's settings that decide its results: its schema's fields (the engine's resource
    settings aside), a custom task's extra keys (+task.my_key=..., attributes beyond the
    schema's fields), its code, and the contents of a task.ranges file (int8/uint8 codes
    depend on them, not on its path)."""
    settings = dataclasses.asdict(task)
    fields = {f.name for f in dataclasses.fields(task)}
    settings.update({k: v for k, v in vars(task).items() if k not in fields})
    if isinstance(settings.get("vllm"), dict):
        settings["vllm"] = {k: v for k, v in settings["vllm"].items() if k not in RESOURCE_SETTINGS}
    if task.name == "custom":
        settings["source"] = custom_task_source(task.target)
    ranges = settings.get("ranges")
    if ranges and Path(ranges).expanduser().is_file():
        settings["ranges_digest"] = file_digest(Path(ranges).expanduser())
    return settings


def _input_paths(spec: InputSpec) -> dict[str, Any]:
    """The input file's resolved path; for a glob or a dataset folder, data.path as given and
    every file read, in order (as before for one file, so older run directories still match)."""
    files = [str(f.resolve()) for f in spec.files]
    if files == [str(Path(spec.source).expanduser().resolve())]:
        return {"path": files[0]}
    return {"path": spec.source, "files": files}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(run_dir: Path, what: str) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"{run_dir} holds finished work {what}. HINT: run.fresh=true discards it and starts "
        "over; run.name=<new name> (or another output.path) keeps it and runs in a new directory."
    )


def changed_units(run_dir: Path, stored: dict[str, Any], new: dict[str, Any]) -> list[int]:
    """The units whose rows changed since ``stored`` was made, and those that are gone (rows
    removed at the end); raise if anything else did (another model, task, unit size: nothing
    finished can be reused). Rows appended, or a file added to a glob, change the row count
    and the file list only: the units whose rows are the same keep their work."""
    scheme = new["inputs"]["digest_scheme"]
    if stored.get("inputs", {}).get("digest_scheme") != scheme:
        raise _refuse(
            run_dir,
            "whose input digests were made by an earlier version of ddpinfer, so which rows "
            "changed since cannot be told",
        )
    ignore = {"inputs": {"digest", "rows", "files"}, UNIT_KEY: None, BLOCK_KEY: None}
    changed = _differences(_without(stored, ignore), _without(new, ignore))
    if changed:
        raise _refuse(run_dir, f"from a different run ({'; '.join(changed[:6])})")
    old_units, new_units = stored.get(UNIT_KEY) or [], new[UNIT_KEY]
    return [
        i
        for i in range(max(len(old_units), len(new_units)))
        if i >= len(old_units) or i >= len(new_units) or old_units[i] != new_units[i]
    ]


def _without(fingerprint: dict[str, Any], ignore: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fingerprint.items():
        if key in ignore and ignore[key] is None:
            continue
        if key in ignore and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ignore[key]}
        out[key] = value
    return out


def refuse_parts_without_fingerprint(run_dir: Path, num_parts: int) -> FingerprintMismatch:
    return _refuse(
        run_dir,
        f"({num_parts} part file(s)) but no {FINGERPRINT} saying what it was computed from, so it "
        "cannot be checked against this run",
    )
