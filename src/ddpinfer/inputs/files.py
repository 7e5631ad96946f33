"""Which files ``data.path`` names, in reading order, and their format.

``data.path`` is one file; a glob of files of one format (``shards/*.parquet``, matches in
sorted order); or a folder written by ``datasets``' ``save_to_disk``: a ``Dataset`` (its Arrow
stream files, in the order ``state.json`` lists them) or a ``DatasetDict`` (one split of it,
``data.split``). The folder is read with pyarrow, not loaded with ``datasets``.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from ddpinfer.errors import InputError

SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
}
GLOB_CHARS = frozenset("*?[")
DATASET_STATE = "state.json"
DATASET_DICT = "dataset_dict.json"
SAMPLE_DATA = Path(__file__).parents[1] / "sample_data" / "texts.jsonl"
"""The bundled sample inputs: data.path's default."""


@dataclass(frozen=True)
class InputFiles:
    files: tuple[Path, ...]
    """The files to read, in order; row numbers count on from one file to the next."""
    format: str


def detect_format(path: Path, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}. "
            f"HINT: set data.format=jsonl|csv|parquet|text."
        )
    return fmt


def find_input_files(path: str, fmt: str = "auto", split: str | None = None) -> InputFiles:
    """The files ``data.path`` names; raise ``InputError`` saying what to pass instead."""
    p = Path(path).expanduser()
    if is_dataset_folder(p) or (fmt == "hf_dataset" and p.is_dir()):
        return InputFiles(_dataset_files(p, split), "hf_dataset")
    if split is not None:
        raise InputError(
            f"data.split={split} applies to a folder written by DatasetDict.save_to_disk, and "
            f"data.path={path} is not one. HINT: leave data.split unset."
        )
    if fmt == "hf_dataset":
        raise InputError(
            f"data.format=hf_dataset needs a folder written by save_to_disk; data.path={path} "
            "is not a folder. HINT: pass that folder, or set data.format=auto."
        )
    if p.is_file():
        return InputFiles((p,), detect_format(p, fmt))
    if GLOB_CHARS & set(path):
        return _glob_files(path, fmt)
    if p.is_dir():
        raise InputError(
            f"data.path={path} is a folder, but not one written by save_to_disk (no "
            f"{DATASET_STATE} or {DATASET_DICT} in it). HINT: pass a file, a glob of files "
            f"such as data.path='{path.rstrip('/')}/*.jsonl', or a save_to_disk folder."
        )
    raise InputError(f"data.path={path}: no such file. HINT: pass an existing input file.")


def is_dataset_folder(path: Path) -> bool:
    return (path / DATASET_STATE).is_file() or (path / DATASET_DICT).is_file()


def _glob_files(pattern: str, fmt: str) -> InputFiles:
    matches = glob.glob(str(Path(pattern).expanduser()), recursive=True)
    files = tuple(sorted(Path(m) for m in matches if Path(m).is_file()))
    if not files:
        raise InputError(
            f"data.path={pattern}: no file matches this pattern. HINT: check the folder and "
            "the pattern (quote it on the command line, e.g. data.path='shards/*.jsonl')."
        )
    formats = {f: detect_format(f, fmt) for f in files}
    first = files[0]
    other = next((f for f in files if formats[f] != formats[first]), None)
    if other is not None:
        raise InputError(
            f"data.path={pattern} matches files of different formats: {first} is "
            f"{formats[first]}, {other} is {formats[other]}. HINT: narrow the pattern to one "
            "format, e.g. *.jsonl."
        )
    return InputFiles(files, formats[first])


def _dataset_files(folder: Path, split: str | None) -> tuple[Path, ...]:
    if (folder / DATASET_DICT).is_file():
        folder = _split_folder(folder, split)
    elif split is not None:
        raise InputError(
            f"data.split={split}, but {folder} holds one Dataset, not a DatasetDict with "
            "splits. HINT: leave data.split unset."
        )
    state_path = folder / DATASET_STATE
    try:
        state = json.loads(state_path.read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{state_path}: cannot read the list of data files ({type(e).__name__}: {e}). "
            "HINT: pass a folder written by Dataset.save_to_disk."
        ) from None
    files = tuple(folder / name for name in names)
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise InputError(
            f"{state_path} lists data file(s) that are not there: "
            f"{', '.join(map(str, missing)) or '(none listed)'}. HINT: copy the whole folder "
            "written by save_to_disk."
        )
    return files


def _split_folder(folder: Path, split: str | None) -> Path:
    try:
        splits = list(json.loads((folder / DATASET_DICT).read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{folder / DATASET_DICT}: cannot read its splits ({type(e).__name__}: {e}). "
            "HINT: pass a folder written by DatasetDict.save_to_disk."
        ) from None
    if split is None and len(splits) == 1:
        split = splits[0]
    if split is None:
        raise InputError(
            f"data.path={folder} is a DatasetDict with splits {', '.join(splits)}. "
            f"HINT: choose one: data.split={splits[0]}."
        )
    if split not in splits:
        raise InputError(
            f"data.split={split} is not a split of {folder}; its splits: {', '.join(splits)}. "
            f"HINT: data.split=<one of them>."
        )
    return folder / split
