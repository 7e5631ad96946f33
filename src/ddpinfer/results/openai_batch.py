"""Answers to an OpenAI Batch API file, in the Batch output shape: one line per request that
ran, in input order, ``{id, custom_id, response: {status_code, request_id, body}, error}``, its
body what the endpoint answers (``chat.completion``, ``text_completion``, an embedding ``list``)
with ``usage``; the requests that could not run go to the error file beside it, as OpenAI's
``{id, custom_id, response: null, error: {code, message}}``. Ids are made from the custom_id,
so a resumed run writes the same lines."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ddpinfer.rundir.parts import python_ids

MODEL = "ddpinfer"
"""The body's ``model`` (the requests' own were ignored: model.path answered them all)."""


def _digest(custom_id: Any, kind: str) -> str:
    return hashlib.sha256(f"{kind}:{custom_id}".encode()).hexdigest()[:24]


def _answers(row: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """A row's answers as (text, finish reason, logprobs content or None): a list of n when
    task.n > 1, one plain value each otherwise."""
    texts, reasons, logprobs = row["generated_text"], row["finish_reason"], row.get("logprobs")
    if not isinstance(texts, list):
        return [(texts, reasons, logprobs)]
    return list(zip(texts, reasons, logprobs or [None] * len(texts), strict=True))


def chat_body(custom_id: Any, row: dict[str, Any], created: int) -> dict[str, Any]:
    choices = [
        {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
         "logprobs": None if lp is None else {"content": lp}}
        for k, (text, reason, lp) in enumerate(_answers(row))
    ]  # fmt: skip
    return {"id": f"chatcmpl-{_digest(custom_id, 'body')}", "object": "chat.completion",
            "created": created, "model": MODEL, "choices": choices,
            "usage": _usage(row)}  # fmt: skip


def completion_body(custom_id: Any, row: dict[str, Any], created: int) -> dict[str, Any]:
    choices = [
        {"index": k, "text": text, "finish_reason": reason, "logprobs": _completion_logprobs(lp)}
        for k, (text, reason, lp) in enumerate(_answers(row))
    ]
    return {"id": f"cmpl-{_digest(custom_id, 'body')}", "object": "text_completion",
            "created": created, "model": MODEL, "choices": choices,
            "usage": _usage(row)}  # fmt: skip


def _completion_logprobs(content: list[dict] | None) -> dict[str, Any] | None:
    """The completions endpoint's older logprobs shape, from the chat one."""
    if content is None:
        return None
    offsets, at = [], 0
    for entry in content:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in content],
        "token_logprobs": [e["logprob"] for e in content],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in content],
        "text_offset": offsets,
    }


def embedding_body(custom_id: Any, row: dict[str, Any], created: int) -> dict[str, Any]:
    tokens = int(row.get("prompt_tokens") or 0)
    return {"object": "list", "model": MODEL,
            "data": [{"object": "embedding", "index": 0, "embedding": list(row["embedding"])}],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _usage(row: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


class OpenAIBatchWriter:
    """The output writer for ``openai_batch_<endpoint>`` (merge's writer interface; the side
    file is the error file)."""

    def __init__(self, body: Any, tmp: Path, errors_tmp: Path | None, files: Any, units: Any):
        self.body = body
        self.file = open(tmp, "wb")
        self.errors_file = open(errors_tmp, "wb") if errors_tmp is not None else None
        self.created = int(time.time())

    def write(self, table: pa.Table) -> None:
        ids = python_ids(table)
        names = [n for n in table.column_names if n not in ("id", "row")]
        rows = table.select(names).to_pylist()
        write, dumps = self.file.write, orjson.dumps
        for custom_id, row in zip(ids, rows, strict=True):
            line = {
                "id": f"batch_req_{_digest(custom_id, 'line')}",
                "custom_id": custom_id,
                "response": {"status_code": 200,
                             "request_id": f"req_{_digest(custom_id, 'request')}",
                             "body": self.body(custom_id, row, self.created)},
                "error": None,
            }  # fmt: skip
            write(dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))

    def errors(self, records: list[dict[str, Any]]) -> None:
        """Requests that could not run (``{row, id, error}`` each), as OpenAI's error lines."""
        if self.errors_file is None:
            return
        for record in records:
            line = {"id": f"batch_req_{_digest(record['id'], 'line')}",
                    "custom_id": record["id"], "response": None,
                    "error": {"code": "invalid_request", "message": record["error"]}}  # fmt: skip
            self.errors_file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        self.file.close()
        if self.errors_file is not None:
            self.errors_file.close()


def writers() -> dict[str, Any]:
    """merge's writer for each endpoint's output format (``openai_batch_<endpoint>``)."""

    def writer(body: Any) -> Any:
        return lambda *args: OpenAIBatchWriter(body, *args)

    return {"openai_batch_chat": writer(chat_body),
            "openai_batch_completions": writer(completion_body),
            "openai_batch_embeddings": writer(embedding_body)}  # fmt: skip
