"""The run directory's files: atomic writes, part and fragment files, and the journals of
windows in flight. The on-disk contract that plan reads, compute writes and results merges."""
