"""Chat messages in input records (``data.messages_field``): OpenAI's list of ``{role,
content}``, checked as each record is read (a malformed one is a bad record naming its file and
line) and kept as canonical JSON text, which is what the row's content digest covers.

A message's content is a string, or a list of parts: ``{"type": "text", "text": ...}`` and, for
image_text, ``{"type": "image_url", "image_url": {"url": ...}}`` where the url is a local path
(relative to the data file's folder) or a ``data:`` URL. ``conversation`` turns the messages
into what chat templates take, with the images in order beside it.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import orjson

ROLES = ("system", "developer", "user", "assistant", "tool")


def check_messages(value: Any, folder: Path) -> str:
    """``value`` checked as a list of messages; returned as canonical JSON (image paths
    resolved). Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, list) or not value:
        kind = "null" if value is None else type(value).__name__
        raise ValueError(f"is {kind}, expected a non-empty list of {{role, content}} messages")
    return orjson.dumps([_message(m, k, folder) for k, m in enumerate(value)]).decode()


def _message(message: Any, k: int, folder: Path) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueError(f"message {k} is {type(message).__name__}, expected an object")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ValueError(f"message {k} has role {role!r}, expected one of {', '.join(ROLES)}")
    if isinstance(content, str):
        return {**message, "content": content}
    if not isinstance(content, list) or not content:
        raise ValueError(f"message {k} has content {type(content).__name__}, expected a string "
                         "or a list of text and image_url parts")  # fmt: skip
    return {**message, "content": [_part(p, k, folder) for p in content]}


def _part(part: Any, k: int, folder: Path) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str) and url:
            return {"type": "image_url", "image_url": {"url": _image_url(url, folder)}}
    raise ValueError(f"message {k} has a content part {part!r}; expected "
                     '{"type": "text", "text": ...} or {"type": "image_url", "image_url": '
                     '{"url": <path or data: URL>}}')  # fmt: skip


def _image_url(url: str, folder: Path) -> str:
    if url.startswith("data:"):
        _data_url_bytes(url)
        return url
    if "://" in url:
        raise ValueError(f"image {url!r}: only local paths and data: URLs are read (no network)")
    path = Path(url.removeprefix("file:")).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.is_file():
        raise ValueError(f"image {url!r} not found (looked for {path})")
    return str(path)


def _data_url_bytes(url: str) -> bytes:
    header, _, data = url.partition(",")
    if not header.endswith(";base64") or not data:
        raise ValueError(f"image {url[:40]!r}...: expected data:<type>;base64,<data>")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as e:
        raise ValueError(f"image {url[:40]!r}...: bad base64 ({e})") from None


def parse(text: str) -> list[dict[str, Any]]:
    """The messages a checked record holds."""
    return orjson.loads(text)


def with_system(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict]:
    """A system turn first (task.system_prompt), unless the messages begin with one."""
    if not system_prompt or (messages and messages[0]["role"] in ("system", "developer")):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The messages as chat templates take them (an image part as ``{"type": "image"}``) and
    their images, decoded as RGB, in order."""
    from ddpinfer.inputs import images

    turns, decoded = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part["type"] == "image_url":
                    decoded.append(_load(part["image_url"]["url"], images))
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            content = parts
        turns.append({**message, "content": content})
    return turns, decoded


def _load(url: str, images: Any) -> Any:
    if not url.startswith("data:"):
        return images.load([url])[0]
    from PIL import Image

    try:
        with Image.open(io.BytesIO(_data_url_bytes(url))) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as e:
        raise images.ImageError(f"image data: URL: cannot decode it ({e})") from e
