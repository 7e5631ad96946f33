"""Running the model: claimed windows of work in, length-sorted batches through a task on this
rank's device, finished units out as part files. Model loading, device maps and the tasks live
here too."""

from ddpinfer.torch_extensions import hide_unloadable

hide_unloadable()  # before transformers or vLLM is imported (see torch_extensions)

# ruff: noqa: E402

from ddpinfer.compute.rank_loop import run_units
from ddpinfer.compute.tasks import build_task
from ddpinfer.compute.windows import Throughput

__all__ = ["Throughput", "build_task", "run_units"]
