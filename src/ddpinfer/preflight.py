"""Everything that can be checked before heavy work, agreed on by all ranks.

Each rank checks what it alone can see (its copy of the input file, the model folder, on rank 0
the output folder); then rank 0 reads every input record once, checks the run directory's
fingerprint, and decides which work units are still to do. Ranks exchange the outcome in two
small collectives, so a bad setting stops every rank at once, each naming the rank that saw the
problem, instead of leaving the others waiting on it.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf

from ddpinfer import fingerprint, inputs, work_units
from ddpinfer.atomic import atomic_text
from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.launch_env import LaunchEnv
from ddpinfer.model_loading import check_model_path
from ddpinfer.parts import finished_units, parts_dir
from ddpinfer.process_group import ProcessGroup
from ddpinfer.tasks import input_fields, model_path

log = logging.getLogger("ddpinfer")

T = TypeVar("T")

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "texts.jsonl"


class PeerError(UserError):
    """Another rank found a problem in the set-up; that rank reports it."""


@dataclass(frozen=True)
class Plan:
    spec: inputs.InputSpec
    units: list[range]
    unit_size: int
    pending: list[int]
    """Units not finished by an earlier run, in order."""
    bad_rows: dict[int, str]
    """Rows not to run, with the reason (duplicate ids under data.on_error=skip)."""
    output: Path
    output_format: str


def agreed(group: ProcessGroup, step: Callable[[], T]) -> T:
    """Run ``step`` on every rank; if it raised anywhere, raise on every rank."""
    result, error = None, None
    try:
        result = step()
    except UserError as e:
        error = e
    reports = group.all_gather_object(None if error is None else str(error))
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(reports) if message]
    if failed:
        rank, message = failed[0]
        raise PeerError(f"rank {rank} found a problem: {message}")
    return result  # type: ignore[return-value]


def input_spec(cfg: Config) -> inputs.InputSpec:
    return inputs.open_spec(
        cfg.data.path or str(SAMPLE_DATA),
        cfg.data.format,
        cfg.data.text_field,
        cfg.data.id_field,
        skip_bad=cfg.data.on_error == "skip",
        fields=input_fields(cfg),
    )


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ddpinfer-write-test-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"output folder {folder} is not writable ({e.strerror}). HINT: choose another "
            "output.path, or fix the folder's permissions."
        ) from None


def _local_checks(cfg: Config, env: LaunchEnv, output: Path, fmt: str) -> inputs.InputSpec:
    if fmt == "npy" and cfg.task.name != "embed":
        raise UserError(
            f"output.format=npy holds embeddings, but task={cfg.task.name}. "
            "HINT: use output.format=jsonl or parquet (or an output.path ending in one of those)."
        )
    spec = input_spec(cfg)
    check_model_path(model_path(cfg))
    if env.is_main:
        _check_writable(output.parent)
    return spec


def _plan_on_main(cfg: Config, spec: inputs.InputSpec, run_dir: Path) -> dict:
    if cfg.run.fresh:
        log.info("run.fresh=true: discarding earlier work in %s", run_dir)
        shutil.rmtree(parts_dir(run_dir), ignore_errors=True)
        (run_dir / "fingerprint.json").unlink(missing_ok=True)
    scan = inputs.scan(spec)
    unit_size = cfg.data.unit_size or work_units.auto_unit_size(scan.num_rows)
    resumed = fingerprint.check_or_store(
        run_dir, fingerprint.compute(cfg, spec, model_path(cfg), scan.num_rows, unit_size)
    )
    with atomic_text(run_dir / "config.yaml") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    units = work_units.plan_units(scan.num_rows, unit_size)
    done = finished_units(run_dir)
    pending = [i for i in range(len(units)) if i not in done]
    if scan.bad_rows:
        log.warning(
            "%d bad input(s) will be skipped and recorded in %s",
            scan.bad_rows,
            run_dir / "errors.jsonl",
        )
    if resumed:
        log.info(
            "resuming: %d of %d work unit(s) already done by an earlier run, %d to do",
            len(units) - len(pending),
            len(units),
            len(pending),
        )
    return {
        "num_rows": scan.num_rows,
        "unit_size": unit_size,
        "pending": pending,
        "bad_rows": scan.duplicates,
    }


def preflight(
    cfg: Config,
    env: LaunchEnv,
    group: ProcessGroup,
    run_dir: Path,
    output: Path,
    output_format: str,
) -> Plan:
    spec = agreed(group, lambda: _local_checks(cfg, env, output, output_format))
    plan = agreed(group, lambda: _plan_on_main(cfg, spec, run_dir) if env.is_main else None)
    plan = group.broadcast_object(plan)
    units = work_units.plan_units(plan["num_rows"], plan["unit_size"])
    log.info(
        "%d input(s) in %d work unit(s) of up to %d; %d rank(s)",
        plan["num_rows"],
        len(units),
        plan["unit_size"],
        env.world_size,
    )
    return Plan(
        spec, units, plan["unit_size"], plan["pending"], plan["bad_rows"], output, output_format
    )
