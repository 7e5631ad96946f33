"""One run, top to bottom: launch environment, device, process group, inputs, work units,
inference, part files, and rank 0's merge into the final output."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpinfer import inputs, launch_env, work_units
from ddpinfer.atomic import atomic_text
from ddpinfer.config import Config, to_config
from ddpinfer.device import DeviceError, pin_device, resolve_device, set_cpu_threads
from ddpinfer.faults import maybe_fail
from ddpinfer.inference import group_by_unit, run_unit
from ddpinfer.logs import setup_logging
from ddpinfer.merge import MergeError, merge_parts, output_format
from ddpinfer.model_loading import ModelLoadError
from ddpinfer.part_transfer import collect_parts, ranks_sharing_run_dir
from ddpinfer.parts import finished_units, write_part
from ddpinfer.process_group import ProcessGroup
from ddpinfer.run_dir import resolve_run_dir
from ddpinfer.tasks import build_task

log = logging.getLogger("ddpinfer")

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "texts.jsonl"

# Errors whose message tells the user what to fix; they are reported without a traceback.
USER_ERRORS = (
    ValueError,
    launch_env.LaunchError,
    DeviceError,
    ModelLoadError,
    MergeError,
)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    output: Path | None
    """The merged result file (rank 0 only)."""
    rows_done: int
    """Inputs this rank ran through the model in this invocation."""


def run(cfg: Config, environ: Mapping[str, str] | None = None) -> RunResult:
    env = launch_env.detect(environ)
    device = resolve_device(cfg.device, env)
    pin_device(device)
    run_dir = resolve_run_dir(cfg, env.job_id)
    setup_logging(run_dir, env.rank, env.is_main, cfg.log_level)
    if device.type == "cpu":
        threads = set_cpu_threads(cfg.cpu_threads, env.local_world_size)
        log.debug("cpu threads per process: %d", threads)
    spec = inputs.open_spec(
        cfg.data.path or str(SAMPLE_DATA), cfg.data.format, cfg.data.text_field, cfg.data.id_field
    )
    output = Path(cfg.output.path).expanduser() if cfg.output.path else None
    fmt = output_format(output or Path("output.jsonl"), cfg.output.format)
    output = output or run_dir / f"output.{fmt}"

    group = ProcessGroup(env, device, cfg.run.timeout_s)
    try:
        if env.is_main:
            log.info("run directory %s; %d rank(s) on %s", run_dir, env.world_size, device.type)
            with atomic_text(run_dir / "config.yaml") as f:
                f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        num_rows = inputs.count_rows(spec)
        units = work_units.plan_units(num_rows, cfg.data.unit_size)
        mine = work_units.assign(len(units), env.rank, env.world_size)
        rows_done = _run_units(cfg, env.rank, device, run_dir, spec, units, mine)
        group.barrier()
        shares = ranks_sharing_run_dir(group, run_dir, cfg.output.shared_fs)
        collect_parts(group, run_dir, list(mine), shares)
        if not env.is_main:
            return RunResult(run_dir, None, rows_done)
        written = merge_parts(run_dir, units, output, fmt)
        log.info("wrote %d records to %s", written, output)
        return RunResult(run_dir, output, rows_done)
    finally:
        group.close()


def _run_units(
    cfg, env_rank: int, device, run_dir: Path, spec, units: list[range], mine: range
) -> int:
    done_before = finished_units(run_dir)
    todo = [i for i in mine if i not in done_before]
    log.info(
        "%d input(s) in %d work unit(s); this rank has %d unit(s), %d to do",
        units[-1].stop if units else 0,
        len(units),
        len(mine),
        len(todo),
    )
    if not todo:
        return 0
    task = build_task(cfg, device)
    rows = inputs.read_rows(spec, work_units.rows_of([units[i] for i in mine]))
    start, done, started = time.perf_counter(), 0, 0
    for unit_index, unit_rows in zip(mine, group_by_unit(rows, [units[i] for i in mine])):
        if unit_index in done_before:
            continue
        maybe_fail(cfg.fault, env_rank, started)
        started += 1
        write_part(run_dir, unit_index, run_unit(task, unit_rows, cfg.batch_size))
        done += len(unit_rows)
        rate = done / max(time.perf_counter() - start, 1e-9)
        log.info("unit %d done (%d rows, %.1f rows/s on this rank)", unit_index, done, rate)
    return done


def main(cfg: DictConfig) -> None:
    """Validate and run Hydra's composed config; errors a user can fix become one clear line
    naming the rank, and exit code 2, instead of a traceback."""
    try:
        run(to_config(cfg))
    except USER_ERRORS as e:
        report_error(e)
        sys.exit(2)


def report_error(error: BaseException) -> None:
    """One line on stderr naming the rank, and the same line in the rank's log file if any."""
    message = f"error on rank {launch_env.detect().rank}: {error}"
    print(f"ddpinfer: {message}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None))
