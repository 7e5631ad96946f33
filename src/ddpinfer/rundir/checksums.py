"""Every stored batch verifies itself: each Arrow record batch of a part, fragment or journal is
written with an xxh3-64 checksum of its bytes and of its schema (which holds the batch's error
records) in the batch's own custom metadata. A reader recomputes it and drops a batch that does
not match: a torn append that reads back as zeros, a truncated file, flipped bits.

The checksum covers the batch as Arrow serializes it, which is the same bytes whether the batch
was built, sliced, filtered or read back from a file."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import xxhash

CHECKSUM_KEY = b"ddpinfer.xxh3"


class ChecksumError(ValueError):
    """A stored batch whose bytes are not the ones written."""


def checksum(schema: pa.Schema, batch: pa.RecordBatch) -> bytes:
    digest = xxhash.xxh3_64()
    digest.update(schema.serialize().to_pybytes())
    digest.update(batch.serialize().to_pybytes())
    return digest.hexdigest().encode()


def batches(table: pa.Table) -> list[pa.RecordBatch]:
    """The table's record batches, at least one (an empty one for a table without rows, so that
    its schema, and the error records in it, are checked too)."""
    found = table.to_batches()
    if found:
        return found
    empty = [pa.array([], type=f.type) for f in table.schema]
    return [pa.RecordBatch.from_arrays(empty, schema=table.schema)]


def write_checked(writer: pa.ipc.RecordBatchFileWriter, table: pa.Table) -> None:
    """Write ``table`` through an IPC ``writer`` (file or stream), each batch with its checksum."""
    for batch in batches(table):
        writer.write_batch(batch, custom_metadata={CHECKSUM_KEY: checksum(table.schema, batch)})


def verified(schema: pa.Schema, batch: pa.RecordBatch, metadata) -> pa.RecordBatch:
    """``batch`` if its stored checksum matches its bytes; else raise ``ChecksumError``."""
    stored = (metadata or {}).get(CHECKSUM_KEY) if metadata is not None else None
    if stored is None:
        raise ChecksumError("a batch without a checksum")
    if stored != checksum(schema, batch):
        raise ChecksumError("a batch whose checksum does not match its bytes")
    return batch


def read_file_checked(source) -> pa.Table:
    """Every batch of an Arrow IPC file, verified; raises ``ChecksumError`` or Arrow's error."""
    reader = pa.ipc.open_file(source)
    found = [
        verified(reader.schema, *reader.get_batch_with_custom_metadata(i))
        for i in range(reader.num_record_batches)
    ]
    if not found:
        raise ChecksumError("a file without batches")
    return pa.Table.from_batches(found, schema=reader.schema)


def read_stream_checked(reader: pa.ipc.RecordBatchStreamReader) -> Iterator[pa.RecordBatch]:
    """The batches of one IPC stream, each verified."""
    while True:
        try:
            batch, metadata = reader.read_next_batch_with_custom_metadata()
        except StopIteration:
            return
        yield verified(reader.schema, batch, metadata)
