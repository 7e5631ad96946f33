"""The part writer's queue is bounded: a slow filesystem holds the compute thread back instead
of letting finished results pile up in memory."""

import threading

import numpy as np

from ddpinfer.compute.part_writer import MAX_PENDING, PartWriter
from ddpinfer.compute.unit_tracker import UnitResult
from ddpinfer.inputs import Row


def test_a_hung_filesystem_blocks_submit_once_the_queue_is_full(tmp_path):
    disk = threading.Event()  # the filesystem answers once this is set
    submitted = []

    def result(unit):
        rows = [Row(unit, unit, "t")]
        return UnitResult(unit, rows, [0], {"embedding": np.zeros((1, 2), np.float32)}, [])

    with PartWriter(tmp_path, before_write=disk.wait) as writer:

        def compute():
            for unit in range(MAX_PENDING + 5):
                writer.submit(result(unit))
                submitted.append(unit)

        thread = threading.Thread(target=compute, daemon=True)
        thread.start()
        thread.join(timeout=2)
        assert thread.is_alive()  # blocked, not piling results up
        assert len(submitted) <= MAX_PENDING + 1  # the queue, and the one being written
        disk.set()
        thread.join(timeout=300)
    assert sorted(writer.units_done) == list(range(MAX_PENDING + 5))
