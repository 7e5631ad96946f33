"""Content digests of input rows: of the whole file and of each block of consecutive rows.

Made while rank 0's preflight scan reads every record anyway. A row is hashed by what reaches
the model and the output (its id and text, or why it is bad), so the digests say whether the
results computed from a block of rows still hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddpinfer.inputs import Row


class RowDigests:
    """sha256 of the rows' content, for the whole input and per block of rows: each row's id,
    text (or why it is bad) and the values of ``kept`` fields (they reach the output)."""

    def __init__(self, paths: Sequence[str], block_rows: int, kept: Sequence[str] = ()) -> None:
        # longest first, so that a path that begins another is not cut out of it
        self.paths = sorted(paths, key=len, reverse=True)
        self.block_rows, self.kept = block_rows, tuple(kept)
        self.file, self.block = hashlib.sha256(), hashlib.sha256()
        self.blocks: list[str] = []

    def add(self, row: Row) -> None:
        # The error text, not the path it names: the same record has the same digest wherever
        # the file lies (each node checks its own copy against rank 0's).
        error = row.error
        for path in self.paths if error else ():
            error = error.replace(path, "")
        content: tuple = (row.id, row.text, error)
        if self.kept:  # only then, so digests made before keep_fields existed still hold
            content += tuple((row.fields or {}).get(name) for name in self.kept)
        data = repr(content).encode("utf-8", "surrogatepass") + b"\n"
        self.file.update(data)
        self.block.update(data)
        if (row.index + 1) % self.block_rows == 0:
            self._close_block()

    def _close_block(self) -> None:
        self.blocks.append(self.block.hexdigest()[:16])
        self.block = hashlib.sha256()

    def finish(self, num_rows: int) -> tuple[str, list[str]]:
        if num_rows % self.block_rows:
            self._close_block()
        self.file.update(f"rows={num_rows}".encode())
        return self.file.hexdigest()[:32], self.blocks
