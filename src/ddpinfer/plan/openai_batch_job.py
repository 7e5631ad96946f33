"""A run over an OpenAI Batch API file: the settings it implies, taken on before the preflight.

``data.format=openai_batch`` (or ``auto`` with a first line shaped as a batch request) reads
``custom_id`` as the id, the body's prompt as the text and the body's settings as each row's
params; the output is in the Batch output shape (``output.format=openai_batch``, the default
then), with the requests that could not run in an error file beside it.
"""

from __future__ import annotations

import logging

from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs.files import find_input_files
from ddpinfer.inputs.openai_batch import RequestCheck, endpoint_of, first_request

log = logging.getLogger("ddpinfer")

FORMAT = "openai_batch"
TASKS = {"/v1/chat/completions": ("generate", "image_text"), "/v1/completions": ("generate",),
         "/v1/embeddings": ("embed",)}  # fmt: skip


def adopt(cfg: Config) -> str | None:
    """If data.path is a batch file, set what reading it and writing its answers take, and
    return its endpoint; else None (nothing changes)."""
    if cfg.data.format not in ("auto", FORMAT) or cfg.data.path is None:
        return None
    fmt = "jsonl" if cfg.data.format == FORMAT else "auto"
    files = find_input_files(cfg.data.path, fmt, cfg.data.split)
    first = first_request(files.files[0]) if files.format == "jsonl" else None
    if first is None:
        if cfg.data.format == FORMAT:
            raise UserError(
                f"data.path={cfg.data.path}: data.format=openai_batch, but its first line is no "
                "batch request ({custom_id, method, url, body}). HINT: check the file."
            )
        return None
    try:
        endpoint = endpoint_of(first, f"{files.files[0]}:1")
    except ValueError as e:
        raise UserError(
            f"{e}. HINT: one endpoint per file, as OpenAI's Batch API requires."
        ) from None
    if cfg.task.name not in TASKS[endpoint]:
        raise UserError(
            f"data.path={cfg.data.path} holds {endpoint} requests, which task={cfg.task.name} "
            f"does not answer. HINT: task={TASKS[endpoint][0]}."
        )
    data = cfg.data
    data.format, data.id_field, data.text_field = FORMAT, "custom_id", "body"
    if endpoint != "/v1/embeddings":
        data.params_field = "body"
        data.messages_field = "body" if endpoint == "/v1/chat/completions" else None
    if cfg.output.format in ("auto", FORMAT):
        cfg.output.format = output_format(endpoint)
    if "model" in first.get("body", {}):
        log.info("%s: the requests' body.model is ignored: model.path answers them all",
                 cfg.data.path)  # fmt: skip
    return endpoint


def output_format(endpoint: str) -> str:
    """The output writer for answers to ``endpoint``'s requests (``results.openai_batch``)."""
    names = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/embeddings": "embeddings"}  # fmt: skip
    return f"{FORMAT}_{names[endpoint]}"


def check_output_format(cfg: Config) -> None:
    if cfg.output.format == FORMAT:
        raise UserError(
            "output.format=openai_batch writes answers to an OpenAI batch input, and "
            f"data.path={cfg.data.path} is none. HINT: output.format=jsonl."
        )


def endpoint(cfg: Config) -> str | None:
    """The endpoint of an adopted batch file (None for other inputs)."""
    if cfg.data.format != FORMAT or cfg.data.path is None:
        return None
    files = find_input_files(cfg.data.path, "jsonl")
    first = first_request(files.files[0])
    return endpoint_of(first or {}, f"{files.files[0]}:1")


def request_check(cfg: Config) -> RequestCheck | None:
    found = endpoint(cfg)
    return RequestCheck(found) if found else None
