"""This process's peak resident memory, for the stats, the manifest and the benchmarks."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """MiB at the high-water mark of this process's own memory.

    On Linux it is ``VmHWM``, which starts anew at ``exec``; ``ru_maxrss`` does not: a process
    started by a bigger one (a torchrun worker, a benchmark's fresh process) reports its parent's
    peak there until it outgrows it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes there, KiB here
