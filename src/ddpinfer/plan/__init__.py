"""What is left to do, agreed by every rank before the model loads: the preflight checks, the
fingerprint a resume is checked against, the work units, and what the task needs."""

from ddpinfer.plan.outputs import Output, ids_path, record_written
from ddpinfer.plan.preflight import Plan, preflight
from ddpinfer.plan.task_needs import model_path

__all__ = ["Output", "Plan", "ids_path", "model_path", "preflight", "record_written"]
