"""Every stored record verifies itself: an xxh3-64 checksum of its bytes, stored with it and
checked before Arrow parses a byte of it. A torn append that reads back as zeros, a file cut
short, garbage appended or flipped bits are found, and the record is left out (its rows are
computed again). Checking before parsing matters: Arrow trusts the lengths and offsets in the
bytes it reads, and damaged ones can crash the process, at every re-run.

- A part or fragment is one Arrow IPC file followed by a trailer: the checksum of the file's
  bytes, then ``MAGIC``. ``pa.ipc.open_file`` reads it through a view without the trailer.
- A journal is a sequence of records, one per batch, each a header (``MAGIC``, the payload's
  length, its checksum) followed by the payload: an Arrow IPC stream.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pyarrow as pa
import xxhash

MAGIC = b"DDPXXH3\x01"
TRAILER = struct.Struct("<Q8s")
"""A part's trailer: the checksum of the bytes before it, then MAGIC."""
HEADER = struct.Struct("<8sQQ")
"""A journal record's header: MAGIC, the payload's length, its checksum."""


class ChecksumError(ValueError):
    """Stored bytes that are not the ones written."""


def _digest(data) -> int:
    return xxhash.xxh3_64_intdigest(memoryview(data))


def sealed(payload: pa.Buffer) -> bytes:
    """A part's bytes: ``payload`` (an Arrow IPC file) and its trailer."""
    return TRAILER.pack(_digest(payload), MAGIC)


def unsealed(data: pa.Buffer) -> pa.Buffer:
    """The Arrow IPC file inside a part's bytes, once its checksum matches."""
    if data.size < TRAILER.size:
        raise ChecksumError("shorter than its checksum")
    checksum, magic = TRAILER.unpack(data[data.size - TRAILER.size :].to_pybytes())
    if magic != MAGIC:
        raise ChecksumError("no checksum at its end (cut short, or something appended)")
    payload = data.slice(0, data.size - TRAILER.size)
    if _digest(payload) != checksum:
        raise ChecksumError("its checksum does not match its bytes")
    return payload


def framed(payload: pa.Buffer) -> bytes:
    """A journal record's header, to be written just before ``payload``."""
    return HEADER.pack(MAGIC, payload.size, _digest(payload))


def records(data: pa.Buffer) -> Iterator[tuple[int, pa.Buffer | None, str]]:
    """A journal's records in order: (offset, payload, "") for each whose checksum matches,
    (offset, None, why) for one that does not (its header is intact: the next is found); the
    first record whose header is damaged or cut short ends it, as (offset, None, why)."""
    at = 0
    while at < data.size:
        if data.size - at < HEADER.size:
            yield at, None, "a record cut short"
            return
        magic, length, checksum = HEADER.unpack(data[at : at + HEADER.size].to_pybytes())
        start = at + HEADER.size
        if magic != MAGIC or length > data.size - start:
            yield at, None, "a damaged or cut-short record; nothing after it can be found"
            return
        payload = data.slice(start, length)
        if _digest(payload) == checksum:
            yield at, payload, ""
        else:
            yield at, None, "a record whose checksum does not match its bytes"
        at = start + length
