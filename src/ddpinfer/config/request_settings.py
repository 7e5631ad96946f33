"""Settings one generation request may carry, as the task's keys (task.stop, task.n, ...) or per
row (``data.params_field``, an OpenAI batch request's body): their checks, shared by both.

``response_format`` takes a JSON schema (a dict, inline JSON text, or ``@file.json``), a regex
(any other text), a list of choices, or OpenAI's ``{"type": "json_schema" | "json_object" |
"text", ...}``; it becomes one of ``{"json": schema}``, ``{"regex": text}``,
``{"choice": [...]}`` (None: free text), which is what both engines are given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PARAM_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "n", "seed", "logprobs",
              "top_logprobs", "response_format")  # fmt: skip
"""What a row's params may set (``data.params_field``); anything else is a bad record."""
MAX_TOP_LOGPROBS = 20


def response_format(value: Any, folder: Path | None = None) -> dict[str, Any] | None:
    """``value`` as ``{"json" | "regex" | "choice": ...}`` or None; ``ValueError`` if it is
    none of the accepted forms. ``@file.json`` is read relative to ``folder`` (or the working
    directory)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(c, str) and c for c in value):
            raise ValueError("a list of choices must hold non-empty strings")
        return {"choice": list(value)}
    if isinstance(value, str):
        return _from_text(value, folder)
    if not isinstance(value, dict):
        raise ValueError(f"is {type(value).__name__}: expected a JSON schema, regex or choices")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json": {"type": "object"}}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ValueError('type json_schema needs {"json_schema": {"schema": {...}}}')
        return {"json": schema}
    given = [k for k in ("json", "regex", "choice") if k in value]
    if len(given) == 1 and len(value) == 1:
        return response_format(value[given[0]], folder) if given[0] != "regex" else value
    return {"json": dict(value)}  # a JSON schema itself


def _from_text(text: str, folder: Path | None) -> dict[str, Any]:
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        path = path if path.is_absolute() or folder is None else folder / path
        try:
            return {"json": json.loads(path.read_text())}
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{text}: cannot read a JSON schema from {path} ({e})") from None
    if text.lstrip().startswith("{"):
        try:
            return {"json": json.loads(text)}
        except json.JSONDecodeError as e:
            raise ValueError(f"is not valid JSON ({e})") from None
    return {"regex": text}


def stop_strings(value: Any) -> list[str]:
    """``stop``: one string or a list of them."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(s, str) and s for s in values):
        raise ValueError("stop must be a string or a list of non-empty strings")
    return list(values)


def _number(key: str, value: Any, low: float, high: float | None = None, integer=False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{key}={value!r} must be {'an integer' if integer else 'a number'}")
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{key}={value!r} must be {bounds}")
    return value


def check_params(value: Any, folder: Path | None = None) -> dict[str, Any]:
    """A row's params, checked and normalised (``stop`` a list, ``logprobs`` the number of top
    tokens or absent, ``response_format`` as above). ``ValueError`` names the first bad key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"is {type(value).__name__}, expected an object of settings")
    if unknown := [k for k in value if k not in PARAM_KEYS]:
        raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(PARAM_KEYS)}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if v is None:
            continue
        if key in ("max_tokens", "n"):
            out[key] = _number(key, v, 1, integer=True)
        elif key == "temperature":
            out[key] = float(_number(key, v, 0, 2))
        elif key == "top_p":
            out[key] = float(_number(key, v, 1e-9, 1))
        elif key in ("top_k", "seed"):
            out[key] = _number(key, v, -1 if key == "top_k" else -(2**63), integer=True)
        elif key == "stop":
            out[key] = stop_strings(v)
        elif key == "response_format":
            out[key] = response_format(v, folder)
    if "logprobs" in value or "top_logprobs" in value:
        out.update(_logprobs(value.get("logprobs"), value.get("top_logprobs")))
    return out


def _logprobs(logprobs: Any, top: Any) -> dict[str, int]:
    """OpenAI's two forms: chat's ``logprobs: true`` with ``top_logprobs: k``, and completions'
    ``logprobs: k``; as ``{"logprobs": k}`` (none when logprobs is false or absent)."""
    if top is not None:
        _number("top_logprobs", top, 0, MAX_TOP_LOGPROBS, integer=True)
    if logprobs is True:
        return {"logprobs": top or 0}
    if logprobs is None or logprobs is False:
        if top:
            raise ValueError("top_logprobs needs logprobs=true")
        return {}
    return {"logprobs": _number("logprobs", logprobs, 0, MAX_TOP_LOGPROBS, integer=True)}
