"""One run, top to bottom: launch environment, device, process group, preflight, work units,
inference, part files, and rank 0's merge into the final output."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ddpinfer import faults, launch_env, work_units
from ddpinfer.config import Config, to_config
from ddpinfer.device import pin_device, resolve_device, set_cpu_threads
from ddpinfer.errors import UserError
from ddpinfer.inference import UnitRunner
from ddpinfer.inputs import Row, read_rows
from ddpinfer.liveness import Liveness
from ddpinfer.logs import setup_logging
from ddpinfer.merge import merge_parts, output_format
from ddpinfer.part_transfer import collect_parts, ranks_sharing_run_dir
from ddpinfer.parts import write_part
from ddpinfer.preflight import Plan, agreed, preflight
from ddpinfer.process_group import ProcessGroup
from ddpinfer.run_dir import resolve_run_dir
from ddpinfer.run_lock import take_run_lock
from ddpinfer.stopping import (
    EXIT_PEER_FAILED,
    EXIT_PREEMPTED,
    EXIT_UNEXPECTED,
    EXIT_USER_ERROR,
    PeerFailed,
    Preempted,
    Stalled,
    StopSignals,
)
from ddpinfer.tasks import build_task

log = logging.getLogger("ddpinfer")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    output: Path | None
    """The merged result file (rank 0 only)."""
    units_done: list[int]
    """Work units this rank ran in this invocation."""


def run(cfg: Config, environ: Mapping[str, str] | None = None) -> RunResult:
    env = launch_env.detect(environ)
    device = resolve_device(cfg.device, env)
    pin_device(device)
    run_dir = resolve_run_dir(cfg, env.job_id)
    signals = StopSignals().install()
    group = ProcessGroup(env, device, cfg.run.timeout_s)
    # Rank 0 locks the run directory before any rank writes to it (its log file included).
    lock = agreed(group, lambda: take_run_lock(run_dir, env, cfg.run) if env.is_main else None)
    try:
        setup_logging(run_dir, env.rank, env.is_main, cfg.log_level)
        log.debug("pid %d, %s launch, attempt %d", os.getpid(), env.launcher, env.restart_count)
        if lock is not None and lock.took_over:
            log.warning("%s", lock.took_over)
        if device.type == "cpu":
            set_cpu_threads(cfg.cpu_threads, env.local_world_size)
        result = _run_watched(cfg, env, device, run_dir, group, signals)
    finally:
        if lock is not None:
            lock.release()
    group.close()
    return result


def _run_watched(
    cfg: Config,
    env: launch_env.LaunchEnv,
    device: torch.device,
    run_dir: Path,
    group: ProcessGroup,
    signals: StopSignals,
) -> RunResult:
    """Run with heartbeats, progress and failure notices between ranks (when there are several)."""
    liveness = None
    if env.is_distributed:
        run_cfg = cfg.run
        liveness = Liveness(
            env, run_cfg.heartbeat_s, run_cfg.dead_after_s, run_cfg.stall_after_s
        ).start()

    def check_stop() -> None:
        if liveness is not None:
            if signals.received:  # torchrun's agent stops the others when a rank fails
                liveness.poll_failures()
                if liveness.failure_kind == "preempted":  # a signal to all: a preemption
                    signals.check()
            liveness.check()
        signals.check()

    try:
        result = _run(cfg, env, device, run_dir, group, liveness, check_stop)
    except BaseException as e:
        if liveness is not None:
            if not isinstance(e, (PeerFailed, Stalled)):
                kind = "preempted" if isinstance(e, Preempted) else "error"
                liveness.post_failure(f"{type(e).__name__}: {e}", kind)
            liveness.linger()
        raise
    finally:
        if liveness is not None:
            liveness.stop()
    return result


def _run(
    cfg: Config,
    env,
    device,
    run_dir: Path,
    group: ProcessGroup,
    liveness: Liveness | None,
    check_stop,
) -> RunResult:
    output = Path(cfg.output.path).expanduser() if cfg.output.path else None
    fmt = output_format(output or Path("output.jsonl"), cfg.output.format)
    output = output or run_dir / f"output.{fmt}"
    if env.is_main:
        log.info("run directory %s; %d rank(s) on %s", run_dir, env.world_size, device.type)
    plan = preflight(cfg, env, group, run_dir, output, fmt)
    share = work_units.assign(len(plan.pending), env.rank, env.world_size)
    mine = [plan.pending[i] for i in share]
    task = agreed(group, lambda: build_task(cfg, device) if mine else None)
    started = time.perf_counter()
    before_batch = check_stop
    if liveness is not None:

        def before_batch() -> None:  # the previous batch (if any) has finished
            liveness.progress()
            check_stop()

        liveness.progress()  # the stall clock runs from here to the last batch
    runner = UnitRunner(task, cfg.batch_size, before_batch, cfg.fault) if mine else None
    done = _run_units(cfg, env, run_dir, plan, mine, runner)
    if liveness is not None:
        liveness.idle()
        liveness.wait_all_done(check_stop)
    faults.at_finish(cfg.fault, env.rank, env.restart_count)
    # Heartbeats go on through the transfer and the merge: a node lost there is noticed.
    shares = ranks_sharing_run_dir(group, run_dir, cfg.output.shared_fs)
    collect_parts(group, run_dir, done, shares)
    if env.is_main:
        _merge(run_dir, plan, started)
    if liveness is not None:
        liveness.leave()
    return RunResult(run_dir, output if env.is_main else None, done)


def _run_units(
    cfg: Config, env, run_dir: Path, plan: Plan, mine: list[int], runner: UnitRunner | None
) -> list[int]:
    """Run this rank's units in order, writing each one's part as soon as it is finished."""
    log.info("this rank has %d work unit(s) to do", len(mine))
    done: list[int] = []
    if runner is None:
        return done
    units = [plan.units[i] for i in mine]
    rows = read_rows(plan.spec, range(units[0].start, units[-1].stop))
    start, count = time.perf_counter(), 0
    for n, (unit, unit_rows) in enumerate(zip(mine, work_units.split_rows(rows, units))):
        faults.before_unit(cfg.fault, env.rank, env.restart_count, n)
        unit_rows = [_mark_bad(r, plan.bad_rows) for r in unit_rows]
        write_part(run_dir, unit, runner.run(unit_rows))
        done.append(unit)
        count += len(unit_rows)
        rate = count / max(time.perf_counter() - start, 1e-9)
        log.info(
            "unit %d done (%d/%d units, %.1f inputs/s on this rank)",
            unit,
            len(done),
            len(mine),
            rate,
        )
    return done


def _mark_bad(row: Row, bad_rows: dict[int, str]) -> Row:
    reason = bad_rows.get(row.index)
    return row if reason is None or row.error else dataclasses.replace(row, text="", error=reason)


def _merge(run_dir: Path, plan: Plan, started: float) -> None:
    summary = merge_parts(run_dir, plan.units, plan.output, plan.output_format)
    log.info(
        "done: %d input(s), %d written to %s, %d error(s)%s; %.1fs",
        plan.units[-1].stop,
        summary.written,
        plan.output,
        summary.errors,
        f" recorded in {summary.errors_path}" if summary.errors else "",
        time.perf_counter() - started,
    )


def main(cfg: DictConfig) -> None:
    """Validate and run Hydra's composed config. Errors a user can fix become one clear line
    naming the rank; each way of stopping early has its own exit code (see ``stopping``)."""
    try:
        run(to_config(cfg))
        code = 0
    except UserError as e:  # bad input or configuration
        report(f"error: {e}")
        code = EXIT_USER_ERROR
    except Preempted as e:
        report(f"{e}; finished work is kept: run the same command again to resume")
        code = EXIT_PREEMPTED
    except PeerFailed as e:
        report(f"stopping because {e}; finished work is kept for a re-run")
        code = EXIT_PREEMPTED if e.preempted else EXIT_PEER_FAILED
    except Stalled as e:
        report(f"{e}; finished work is kept for a re-run")
        code = EXIT_UNEXPECTED
    except Exception as e:
        traceback.print_exc()
        report(f"unexpected error: {type(e).__name__}: {e}")
        code = EXIT_UNEXPECTED
    # Leave without running C++ destructors: torch.distributed's can abort the process at
    # interpreter exit ("terminate called without an active exception", seen with gloo about
    # once in twenty runs even after destroy_process_group) or hang when peers are gone, and the
    # exit code must be the one chosen here. Every result and log is on disk by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report(text: str) -> None:
    """One line on stderr naming the rank, and the same line in the rank's log file."""
    try:
        rank = launch_env.detect().rank
    except UserError:
        rank = "?"
    message = f"rank {rank}: {text}"
    print(f"ddpinfer: {message}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None))
