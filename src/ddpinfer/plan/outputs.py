"""What the run will write beside the run directory, checked before any work: the output's
format, the side files it comes with, and that writing them harms nothing.

ddpinfer never deletes or replaces a file or folder it did not write: an output path (or the ids
file beside an ``.npy`` output) that already exists is replaced only when this run directory
wrote it (``<run dir>/outputs.json`` records every path it wrote), and a folder output refuses a
non-empty folder it did not write. Nothing the run writes may be an input, or match
``data.path``'s pattern (a re-run would read the results as inputs).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ddpinfer.config import OutputConfig
from ddpinfer.errors import UserError
from ddpinfer.inputs import InputSpec
from ddpinfer.rundir.atomic import atomic_text, sweep_temporaries

SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
}
FOLDER_FORMATS = ("hf_dataset",)
WRITTEN = "outputs.json"


class OutputError(UserError):
    """output.path cannot be written as asked, or writing it would harm another file."""


@dataclass(frozen=True)
class Output:
    path: Path
    format: str

    @property
    def side_files(self) -> tuple[Path, ...]:
        """Files written beside the output: the ids of an ``.npy`` matrix's rows; the requests
        of an OpenAI batch that could not run."""
        return (side_file(self.path, self.format),) if side_file(self.path, self.format) else ()

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.side_files)


def side_file(output: Path, fmt: str) -> Path | None:
    """The file an output of ``fmt`` comes with, if any."""
    if fmt == "npy":
        return ids_path(output)
    if fmt.startswith("openai_batch"):
        stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
        return output.with_name(f"{stem}.errors.jsonl")
    return None


def ids_path(output: Path) -> Path:
    """Where ``output.format=npy`` writes the ids of the matrix's rows: named from the whole
    output name (``emb.a.npy`` -> ``emb.a.ids.jsonl``), so two outputs never share one."""
    name = output.name[: -len(".npy")] if output.name.endswith(".npy") else output.name
    return output.with_name(f"{name}.ids.jsonl")


def resolve_output(cfg: OutputConfig, run_dir: Path) -> Output:
    """output.path and its format (``auto``: from the suffix), or ``<run dir>/output.jsonl``."""
    if not cfg.path:
        fmt = "jsonl" if cfg.format == "auto" else cfg.format
        suffix = "jsonl" if fmt.startswith("openai_batch") else fmt
        name = "output" if fmt in FOLDER_FORMATS else f"output.{suffix}"
        return Output(run_dir / name, fmt)
    given = cfg.path
    path = Path(given).expanduser()
    if path.name in ("", ".", ".."):  # "." or "out/..": name the folder itself
        path = path.resolve()
    fmt = cfg.format
    if fmt == "auto":
        fmt = SUFFIX_FORMATS.get(path.suffix.lower()) if not given.endswith("/") else None
        if fmt is None:
            raise OutputError(
                f"output.path={given}: cannot tell the output format from "
                f"{'a folder path' if given.endswith('/') else repr(path.suffix or 'no suffix')} "
                f"(files: {', '.join(SUFFIX_FORMATS)}). HINT: name a file with one of those "
                "suffixes, or set output.format=jsonl|parquet|npy|hf_dataset (hf_dataset writes "
                "a folder)."
            )
    if given.endswith("/") and fmt not in FOLDER_FORMATS:
        raise OutputError(
            f"output.path={given} ends in '/', a folder, but output.format={fmt} writes one "
            "file. HINT: name the file (output.path=out/results.jsonl), or set "
            "output.format=hf_dataset to write a folder."
        )
    return Output(path, fmt)


def check_output(output: Output, spec: InputSpec, run_dir: Path) -> None:
    """Before any work, on rank 0: the output and its side files can be written, are no input,
    and replace nothing this run directory did not write."""
    ours = written(run_dir)
    for path in output.files:
        _check_not_the_input(path, spec)
        _check_replaceable(path, output.format, path == output.path, ours, run_dir)
    _check_writable(output.path.parent)
    for path in output.files:  # what an earlier attempt's writer left when it died
        sweep_temporaries(path.parent, path.name)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_replaceable(
    path: Path, fmt: str, is_output: bool, ours: set[str], run_dir: Path
) -> None:
    what = "output.path" if is_output else f"{path.name}, written beside output.path,"
    folder = is_output and fmt in FOLDER_FORMATS
    if path.is_dir() and not folder:
        raise OutputError(
            f"{what}={path} is a folder, and output.format={fmt} writes a file. HINT: name a "
            "file inside it (output.path=" + str(path / f"results.{fmt}") + "), or set "
            "output.format=hf_dataset to write a folder."
        )
    if folder and path.exists() and not path.is_dir():
        raise OutputError(
            f"output.path={path} is a file, and output.format=hf_dataset writes a folder. "
            "HINT: choose a folder path."
        )
    occupied = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if occupied and str(path.resolve()) not in ours and not _inside(path, run_dir):
        kind = "a non-empty folder" if path.is_dir() else "a file"
        raise OutputError(
            f"{what} {path} is {kind} that this run did not write, and ddpinfer never replaces "
            "or deletes what it did not write. HINT: move or delete it, or choose another "
            "output.path."
        )


def _check_not_the_input(output: Path, spec: InputSpec) -> None:
    source = Path(spec.source).expanduser()
    for path in (*spec.files, source):  # any input file, or the folder that holds a dataset
        same = output.resolve() == path.resolve()
        if not same and output.exists() and path.exists():
            same = os.path.samefile(output, path)  # a link to the input
        if same:
            where = "" if path == source else f"{path} of "
            raise OutputError(
                f"output.path={output} is the input file {where}data.path={spec.source}: the "
                "results would overwrite the inputs. HINT: choose another output.path."
            )
    if not source.exists() and output.absolute().match(str(source.absolute())):
        raise OutputError(
            f"{output}, written by this run, matches data.path={spec.source}: a re-run would "
            "read the results as inputs. HINT: choose an output.path outside that pattern."
        )


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ddpinfer-write-test.tmp-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"output folder {folder} is not writable ({e.strerror}). HINT: choose another "
            "output.path, or fix the folder's permissions."
        ) from None


def written(run_dir: Path) -> set[str]:
    """The paths (resolved) this run directory has written as outputs and side files."""
    try:
        return set(json.loads((run_dir / WRITTEN).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def record_written(run_dir: Path, output: Output) -> None:
    """Remember ``output``'s files as this run directory's: a later run of it may replace them.
    Called before they are written (a crash in between leaves only a harmless extra name)."""
    paths = written(run_dir) | {str(p.resolve()) for p in output.files}
    with atomic_text(run_dir / WRITTEN) as f:
        json.dump(sorted(paths), f, indent=1)
