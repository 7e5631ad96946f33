"""fault.* (used by the failure tests) applies to the attempt it names."""

import time

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
