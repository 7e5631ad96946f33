"""Content digests of input rows: of the whole file and of each block of consecutive rows.

Made while rank 0's preflight scan reads every record anyway. A row is hashed by what reaches
the model and the output (its id and text, or why it is bad), so the digests say whether the
results computed from a block of rows still hold.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ddpinfer.inputs import Row


class RowDigests:
    """sha256 of the rows' content, for the whole file and per block of rows."""

    def __init__(self, path_text: str, block_rows: int) -> None:
        self.path_text, self.block_rows = path_text, block_rows
        self.file, self.block = hashlib.sha256(), hashlib.sha256()
        self.blocks: list[str] = []

    def add(self, row: Row) -> None:
        # The error text, not the path it names: the same record has the same digest wherever
        # the file lies (each node checks its own copy against rank 0's).
        error = row.error.replace(self.path_text, "") if row.error else None
        data = repr((row.id, row.text, error)).encode("utf-8", "surrogatepass") + b"\n"
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
