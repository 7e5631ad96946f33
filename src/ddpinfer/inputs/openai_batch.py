"""OpenAI Batch API input files (``data.format=openai_batch``, detected from the first line):
one request a line, ``{"custom_id", "method": "POST", "url", "body"}``, one endpoint per file.

A request is read as a row like any other: ``custom_id`` is its id, the body's prompt (chat
``messages``, a completion's ``prompt``, an embedding's ``input``) its text, and the body's
settings its params (``data.params_field`` semantics). ``model`` is ignored (the run has one);
any other field ddpinfer does not know makes the request a bad record naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddpinfer.config.request_settings import check_params
from ddpinfer.inputs import chat

REQUEST_KEYS = ("custom_id", "method", "url", "body")
ENDPOINTS = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}
"""Each endpoint and the body field holding its prompt."""
SETTINGS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
            "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "stop": "stop",
            "n": "n", "seed": "seed", "logprobs": "logprobs", "top_logprobs": "top_logprobs",
            "response_format": "response_format"}  # fmt: skip
"""Body fields that are settings, by the name ddpinfer gives them."""
IGNORED = ("model", "user", "stream", "encoding_format")
"""Body fields that change nothing here (``stream``: answers come in the output file)."""


def first_request(path: Path) -> dict[str, Any] | None:
    """The file's first line as a batch request, or None if it is not one."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    record = json.loads(raw)
                    return record if isinstance(record, dict) and _looks_like(record) else None
    except (OSError, ValueError):
        return None
    return None


def _looks_like(record: dict) -> bool:
    return set(REQUEST_KEYS) <= set(record) and isinstance(record.get("body"), dict)


def endpoint_of(record: dict[str, Any], at: str) -> str:
    url = record.get("url")
    if url not in ENDPOINTS:
        raise ValueError(f"{at}: url {url!r} is not one ddpinfer serves ({', '.join(ENDPOINTS)})")
    return url


class RequestCheck:
    """Checks each request of a file of ``endpoint`` as it is read: its prompt (the row's
    text: chat messages as canonical JSON) and its settings (the row's params)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.prompt_key = ENDPOINTS[endpoint]

    def method(self, value: Any, folder: Path) -> str:
        if value != "POST":
            raise ValueError(f"is {value!r}; batch requests are POST")
        return value

    def url(self, value: Any, folder: Path) -> str:
        if value != self.endpoint:
            raise ValueError(
                f"is {value!r}, but the file's first request is {self.endpoint}: one endpoint "
                "per file"
            )
        return value

    def prompt(self, body: Any, folder: Path) -> str:
        body = self._body(body)
        if self.prompt_key not in body:
            raise ValueError(f"the body has no {self.prompt_key!r}")
        value = body[self.prompt_key]
        if self.prompt_key == "messages":
            return chat.check_messages(value, folder)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"body.{self.prompt_key} must be a non-empty string (one prompt per request)"
            )
        return value

    def params(self, body: Any, folder: Path) -> dict[str, Any]:
        body = self._body(body)
        known = {self.prompt_key, *SETTINGS, *IGNORED}
        if unknown := [k for k in body if k not in known]:
            raise ValueError(
                f"unknown body field {unknown[0]!r} for {self.endpoint}; known: "
                f"{', '.join(sorted(known))}"
            )
        if self.prompt_key == "input":
            return {}
        params = {SETTINGS[k]: v for k, v in body.items() if k in SETTINGS}
        return check_params(params, folder)

    def _body(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError(f"is {type(body).__name__}, expected the request's body object")
        return body
