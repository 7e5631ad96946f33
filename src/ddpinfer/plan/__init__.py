"""What is left to do, agreed by every rank before the model loads: the preflight checks, the
fingerprint a resume is checked against, the work units, and what the task needs."""

from ddpinfer.plan.preflight import Plan, preflight
from ddpinfer.plan.task_needs import model_path

__all__ = ["Plan", "model_path", "preflight"]
