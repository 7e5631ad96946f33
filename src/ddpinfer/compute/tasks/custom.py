"""task=custom: a user's class, adapted to the task interface.

The contract (README, "Your own task"):

- ``__init__(self, cfg, device)``: ``cfg`` is the whole resolved config (extra keys given as
  ``+task.my_key=...`` are attributes of ``cfg.task``); load what you need onto ``device``.
- ``__call__(self, texts: list[str], rows: list[int]) -> list[dict]``: one JSON-serialisable
  dict per text, same order, same keys.
- optional ``lengths(self, texts) -> list[int]``: what each text weighs, for length-sorted
  batches under batch.max_tokens. Without it every text weighs 1 and batches keep input order.

An exception from ``__call__`` is handled like a model's: the batch is split until the input
that raises is found, and that input is recorded in errors.jsonl.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ddpinfer.compute.tasks.base import Task
from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import InputSpec, Row
from ddpinfer.inputs.readers import read_rows

log = logging.getLogger(__name__)


class CustomTaskError(UserError):
    """task.target cannot be imported or constructed."""


def _import_module(name: str) -> Any:
    if name.endswith(".py"):
        path = Path(name).expanduser()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # `python launch/infer.py` puts launch/ first, not the cwd
        sys.path.append(os.getcwd())
    return importlib.import_module(name)


def load_class(target: str) -> type:
    """The class named by ``package.module:ClassName`` or ``path/to/file.py:ClassName``."""
    module_name, _, class_name = target.partition(":")
    try:
        module = _import_module(module_name)
    except Exception as e:
        raise CustomTaskError(
            f"task.target={target}: cannot import {module_name} ({type(e).__name__}: {e}). "
            "HINT: run from the folder that holds the package, add it to PYTHONPATH, or give "
            "the file: task.target=path/to/file.py:ClassName."
        ) from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise CustomTaskError(
            f"task.target={target}: {module_name} has no class {class_name}. "
            f"HINT: the part after ':' names a class defined in {module_name}."
        )
    return cls


class CustomTask(Task):
    """Texts in, the user's per-row dicts out; texts travel through collate as they are."""

    def __init__(self, user: Any, device: torch.device, target: str = "") -> None:
        self.user = user
        self.target = target
        self.device = device
        self.model = getattr(user, "model", None)
        self.tokenizer = None
        self.max_length = None

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        texts = [row.text for row in rows]
        if not hasattr(self.user, "lengths"):
            return [(text, 1) for text in texts]
        try:
            return list(zip(texts, self._lengths(texts), strict=True))
        except Exception:  # one text breaks lengths(): find it, keep the others
            return [self._prepare_one(text) for text in texts]

    def _lengths(self, texts: list[str]) -> list[int]:
        return [max(1, int(n)) for n in self.user.lengths(texts)]

    def _prepare_one(self, text: str) -> Any:
        try:
            return (text, self._lengths([text])[0])
        except Exception as e:
            return RuntimeError(f"lengths() failed: {type(e).__name__}: {e}")

    def cost(self, item: Any) -> int:
        return item[1]

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        return {"texts": [text for text, _ in items]}

    def __call__(self, batch: Mapping[str, Any], rows: Sequence[int]) -> list[dict[str, Any]]:
        texts = batch["texts"]
        records = self.user(list(texts), list(rows))
        if not isinstance(records, list) or len(records) != len(texts):
            got = len(records) if isinstance(records, list) else type(records).__name__
            raise TypeError(f"__call__ must return a list of {len(texts)} dicts, got {got}")
        keys = set(records[0]) if records and isinstance(records[0], dict) else None
        for record in records:
            if not isinstance(record, dict) or set(record) != keys:
                raise TypeError(f"__call__ must return dicts with the same keys, got {record!r}")
        return records


PROBE_ROWS = 16
"""How many of the first input rows ``check_kept_fields`` tries before giving up on a probe."""


def check_kept_fields(task: CustomTask, keep: Sequence[str], spec: InputSpec) -> None:
    """Before any work: run the class on the first input it accepts and refuse output.keep_fields
    that name one of the keys it returns (the output would hold two columns of one name). An
    input that makes the class raise is passed over: it is recorded as an error later, as ever."""
    if not keep:
        return
    for row in read_rows(spec, range(PROBE_ROWS)):
        if row.error is not None:
            continue
        try:
            records = task(task.collate(task.prepare([row])), [row.index])
        except Exception as e:
            log.debug("keep_fields probe: row %d raised %s", row.index, e)
            continue
        clash = [name for name in keep if name in records[0]]
        if clash:
            raise CustomTaskError(
                f"output.keep_fields names {clash[0]!r}, a key task.target={task.target} "
                f"returns itself ({', '.join(records[0])}). HINT: keep other fields, or rename "
                "that input field."
            )
        return


def build(cfg: Config, model_path: str, device: torch.device) -> CustomTask:
    cls = load_class(cfg.task.target)
    try:
        user = cls(cfg, device)
    except Exception as e:
        log.exception("%s(cfg, device) failed", cfg.task.target)
        raise CustomTaskError(
            f"task.target={cfg.task.target}: {cls.__name__}(cfg, device) raised "
            f"{type(e).__name__}: {e}. HINT: the traceback is in the rank's log file."
        ) from e
    if not callable(user):
        raise CustomTaskError(
            f"task.target={cfg.task.target}: {cls.__name__} has no __call__(texts, rows)"
        )
    return CustomTask(user, device, cfg.task.target)
