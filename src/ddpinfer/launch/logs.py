"""Logging: rank 0 talks to the console; every rank writes its own file in the run directory."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"

FILE_ONLY = {"file_only": True}
"""``log.info(..., extra=FILE_ONLY)``: a line for the rank's log file, never the console (the
per-unit lines: rank 0's console has the progress bar for them)."""


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_logging(run_dir: Path, rank: int, is_main: bool, level: str = "INFO") -> Path:
    log_file = run_dir / "logs" / f"rank{rank}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(log_file, encoding="utf-8")]
    if is_main:
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(_not_file_only)
        handlers.append(console)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    _quiet_libraries(is_main)
    return log_file


def _quiet_libraries(is_main: bool) -> None:
    """Library progress bars and warnings once, from rank 0, not once per rank."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not is_main:
        hf_logging.set_verbosity_error()
