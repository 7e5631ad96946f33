"""A process's peak memory is its own, not that of the process it was started from."""

import subprocess
import sys

import pytest

from ddpinfer.memory_use import peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_fresh_process_reports_its_own_peak_not_its_parents():
    ballast = bytearray(400 << 20)  # this process now holds 400 MiB more than a fresh one
    ballast[::4096] = b"\1" * len(ballast[::4096])
    code = "from ddpinfer.memory_use import peak_rss_mb; print(peak_rss_mb())"
    child = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert peak_rss_mb() > 400 and child < 200
