"""Content digests of input rows: of the whole input and of each block of consecutive rows.

Made while rank 0's preflight scan reads every record anyway. A row is hashed by what reaches
the model and the output (its id and text, or why it is bad, and the kept fields), each row as
a JSON array, so the digests say whether the results computed from a block of rows still hold.
The whole input's digest does not depend on the block size: every node checks its copy of the
input against rank 0's with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

SCHEME = 2
"""Recorded in the fingerprint: digests of another scheme (earlier ddpinfer hashed each row's
``repr``, with no scheme recorded) cannot be compared with these."""

_DUMPS = orjson.dumps


def _encoded(rows: list[tuple]) -> bytes:
    """Each row as a JSON array followed by a comma: the bytes of consecutive runs of rows put
    together are those of all of them at once, so the whole input's digest does not depend on
    where runs and blocks end."""
    try:
        return _DUMPS(rows, default=repr)[1:-1] + b","
    except TypeError:  # a lone surrogate (json.loads lets "\ud800" through), an int over 64 bits
        return b"".join(_row_bytes(row) + b"," for row in rows)


def _row_bytes(row: tuple) -> bytes:
    try:
        return _DUMPS(row, default=repr)
    except TypeError:
        return repr(row).encode("utf-8", "surrogatepass")


class RowDigests:
    """sha256 of the rows' content, for the whole input and per block of ``block_rows`` rows;
    rows are added in order, in runs of any length."""

    def __init__(self, paths: Sequence[str], block_rows: int) -> None:
        # longest first, so that a path that begins another is not cut out of it
        self.paths = sorted(paths, key=len, reverse=True)
        self.block_rows = block_rows
        self.file, self.block = hashlib.sha256(), hashlib.sha256()
        self.blocks: list[str] = []
        self._in_block = 0

    def add(
        self,
        ids: Sequence[Any],
        texts: Sequence[str],
        errors: Sequence[str | None] | None = None,
        kept: Sequence[tuple] | None = None,
    ) -> None:
        """The next rows: their ids and texts, each one's error (None: all are good) and the
        values of its kept fields (None: no fields are kept)."""
        rows: Any = zip(ids, texts, errors or [None] * len(ids))
        if errors:
            rows = ((i, t, e and self._without_paths(e)) for i, t, e in rows)
        if kept is not None:
            rows = ((*row, *values) for row, values in zip(rows, kept))
        rows = list(rows)
        start = 0
        while start < len(rows):
            take = min(self.block_rows - self._in_block, len(rows) - start)
            data = _encoded(rows[start : start + take])
            self.file.update(data)
            self.block.update(data)
            self._in_block += take
            start += take
            if self._in_block == self.block_rows:
                self._close_block()

    def _without_paths(self, error: str) -> str:
        # The error text, not the path it names: the same record has the same digest wherever
        # the file lies (each node checks its own copy against rank 0's).
        for path in self.paths:
            error = error.replace(path, "")
        return error

    def _close_block(self) -> None:
        self.blocks.append(self.block.hexdigest()[:16])
        self.block = hashlib.sha256()
        self._in_block = 0

    def finish(self, num_rows: int) -> tuple[str, list[str]]:
        if self._in_block:
            self._close_block()
        self.file.update(f"rows={num_rows}".encode())
        return self.file.hexdigest()[:32], self.blocks
