"""fault.* (used by the failure tests) applies to the attempt it names."""

import time

from helpers import wait_for

from ddpinfer import faults
from ddpinfer.config import FaultConfig


def _seconds_before_a_batch(fault: FaultConfig) -> float:
    began = time.monotonic()
    faults.before_batch(fault, batch_size=1)
    return time.monotonic() - began


def test_a_delay_slows_its_attempt_only():
    slowed = FaultConfig(delay_s=0.3)  # fault.attempt defaults to 0, the first attempt
    assert _seconds_before_a_batch(faults.for_attempt(slowed, 0)) >= 0.3
    assert _seconds_before_a_batch(faults.for_attempt(slowed, 1)) < 0.3  # a resume runs at speed
    always = FaultConfig(delay_s=0.3, attempt=None)
    assert _seconds_before_a_batch(faults.for_attempt(always, 3)) >= 0.3


def test_a_hold_file_holds_each_batch_until_it_is_deleted(tmp_path, caplog):
    import threading

    hold = tmp_path / "hold"
    hold.touch()
    fault = FaultConfig(hold_file=str(hold), slow_rank=1)
    faults.before_batch(fault, batch_size=1, rank=0)  # another rank: not held
    passed = threading.Event()
    thread = threading.Thread(
        target=lambda: (faults.before_batch(fault, 1, rank=1, batches_done=3), passed.set())
    )
    with caplog.at_level("INFO", logger="ddpinfer"):
        thread.start()
        wait_for(lambda: "rank 1 holds before its batch 3" in caplog.text)  # what tests wait on
        assert not passed.is_set()
        hold.unlink()
        thread.join(timeout=300)
    assert passed.is_set()
    assert faults.for_attempt(FaultConfig(hold_file=str(hold)), 1).hold_file is None  # a resume
