"""One run, top to bottom: launch environment, device, process group, preflight, work units,
inference, part files, and rank 0's merge into the final output."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from ddpinfer import faults
from ddpinfer.compute import Throughput, build_task, run_units
from ddpinfer.compute.stream_loop import EngineTask, stream_units
from ddpinfer.compute.tasks.custom import CustomTask, check_kept_fields
from ddpinfer.config import Config, to_config
from ddpinfer.errors import UserError
from ddpinfer.launch import (
    FILE_ONLY,
    Liveness,
    ProcessGroup,
    Watch,
    agreed,
    is_collective_failure,
    pin_device,
    resolve_device,
    resolve_run_dir,
    set_cpu_threads,
    setup_logging,
    take_run_lock,
)
from ddpinfer.launch import env as launch_env
from ddpinfer.launch.stopping import (
    PeerFailed,
    Preempted,
    Reason,
    Stalled,
    StopSignals,
    end_sweep_job,
    ending,
    exit_now,
    in_hydra_sweep,
)
from ddpinfer.launch.sweeps import sweep_job
from ddpinfer.plan import Plan, model_path, preflight, record_written
from ddpinfer.results import (
    MergeSummary,
    Progress,
    collect_parts,
    manifest,
    merge_parts,
    rerun,
    save_merge_stats,
    save_rank_stats,
    summary,
)

log = logging.getLogger("ddpinfer")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    output: Path | None
    """The merged result file (rank 0 only)."""
    written: list[Path]
    """The part and fragment files this rank wrote in this invocation."""


def run(cfg: Config, environ: Mapping[str, str] | None = None) -> RunResult:
    clock = manifest.Stopwatch()
    env = launch_env.detect(environ)
    device = resolve_device(cfg.device, env, cfg.model.gpus_per_replica)
    # An engine takes its GPUs in processes of its own: this one leaves CUDA alone (its context
    # would take the engine's memory) and talks to the other ranks over gloo.
    engine = getattr(cfg.task, "engine", "hf") != "hf"
    if not engine:
        pin_device(device)
    run_dir = resolve_run_dir(cfg, env.job_id)
    new_run_dir = not run_dir.exists()
    signals = StopSignals().install()
    group = ProcessGroup(env, torch.device("cpu") if engine else device, cfg.run.timeout_s)
    # Rank 0 locks the run directory before any rank writes to it (its log file included).
    lock = agreed(group, lambda: take_run_lock(run_dir, env, cfg.run) if env.is_main else None)
    watch = Watch(signals, lock, group.broadcast_object(lock and lock.token), run_dir, cfg.run)
    try:
        setup_logging(run_dir, env.rank, env.is_main, cfg.log.level)
        log.info("command: %s", " ".join(sys.argv), extra=FILE_ONLY)  # what made this directory
        log.debug("pid %d, %s launch, attempt %d", os.getpid(), env.launcher, env.restart_count)
        if lock is not None and lock.took_over:
            log.warning("%s", lock.took_over)
        if device.type == "cpu":
            set_cpu_threads(cfg.cpu_threads, env.local_world_size)
        result = _run_watched(cfg, env, device, run_dir, group, watch, clock)
    except PeerFailed as e:
        if e.reason is Reason.LOST_STORE and lock is not None:
            lock.abandon()  # the other ranks may still write their batch in flight under it
            lock = None
        raise
    except UserError:
        if lock is not None:
            lock.release()
            lock = None
            if new_run_dir:
                remove_if_unused(run_dir)
        raise
    finally:
        if lock is not None:
            lock.release()
    group.close()
    return result


def remove_if_unused(run_dir: Path) -> None:
    """A run directory this job made and left with nothing but its logs (a setting refused
    before any work): gone again, so that failed tries leave no clutter. The error is on the
    console."""
    if {p.name for p in run_dir.iterdir()} <= {"logs"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_watched(
    cfg: Config,
    env: launch_env.LaunchEnv,
    device: torch.device,
    run_dir: Path,
    group: ProcessGroup,
    watch: Watch,
    clock: manifest.Stopwatch,
) -> RunResult:
    """Run with heartbeats, progress and failure notices between ranks, and a stall clock (one
    process too: a hung batch ends it at run.stall_after_s). A failure is posted for the
    others; a collective that failed is blamed on the rank that closed it or never came, not on
    this one."""
    run_cfg = cfg.run
    liveness = Liveness(env, run_cfg.heartbeat_s, run_cfg.dead_after_s, run_cfg.stall_after_s)
    watch.liveness = liveness.start()
    try:
        return _run(cfg, env, device, run_dir, group, watch, clock)
    except BaseException as e:
        error = (liveness.explain(e) if is_collective_failure(e) else None) or e
        if not isinstance(error, (PeerFailed, Stalled)):
            liveness.post_failure(f"{type(error).__name__}: {error}", _reason(error))
        liveness.linger(together=_reason(error).is_stop)
        if error is e:
            raise
        raise error from e
    finally:
        liveness.leave()


def _reason(error: BaseException) -> Reason:
    """Why this rank stops, as its notice tells the others. SystemExit: a launcher plugin ends
    the job to requeue it (submitit on its time-limit signal): a stop, not a failure."""
    if isinstance(error, SystemExit):
        return Reason.PREEMPTED
    if isinstance(error, (Preempted, PeerFailed)):
        return error.reason
    return Reason.STALLED if isinstance(error, Stalled) else Reason.ERROR


def _run(
    cfg: Config,
    env: launch_env.LaunchEnv,
    device: torch.device,
    run_dir: Path,
    group: ProcessGroup,
    watch: Watch,
    clock: manifest.Stopwatch,
) -> RunResult:
    if env.is_main:
        log.info("run directory %s; %d rank(s) on %s", run_dir, env.world_size, device.type)
    clock.lap("startup")
    watch.phase("preflight")
    plan = preflight(cfg, env, group, run_dir, watch.check_stop)
    watch.guard_writes(plan.shares[env.rank])
    clock.lap("preflight")
    task = agreed(group, lambda: build_task(cfg, device, env) if plan.pending else None)
    if isinstance(task, CustomTask):  # its columns are known once it runs: try one input
        keep = plan.spec.keep
        agreed(group, lambda: check_kept_fields(task, keep, plan.spec) if env.is_main else None)
    clock.lap("model_load")
    written, record = _infer(cfg, env, device, run_dir, plan, task, watch)
    clock.lap("inference")
    faults.at_finish(cfg.fault, env.rank, env.attempt)
    watch.phase("finish")
    ranks = group.all_gather_object(record, finishing=True)
    # Heartbeats go on through the transfer and the merge: a node lost there is noticed.
    watch.phase("transfer")
    collect_parts(group, run_dir, [*plan.send_later, *written], plan.shares)
    if env.is_main:
        carried = rerun.intact_output(run_dir, plan.output.files) if _all_done(plan) else None
        if carried is None:
            watch.phase("merge")
            merged = _merge(run_dir, plan, record["seconds"], watch.fence)
            clock.lap("merge")
            carried = {"rows": merged.written, "errors": merged.errors}
        else:
            log.info(
                "done already: no work was left and %s is as the last attempt wrote it: not "
                "merged again (run.fresh=true recomputes everything)",
                plan.output.path,
            )
        watch.fence()
        _finish(cfg, env, clock, ranks, run_dir, plan, carried, task)
    return RunResult(run_dir, plan.output.path if env.is_main else None, written)


def _all_done(plan: Plan) -> bool:
    """No unit left to compute and every part in rank 0's run directory."""
    return not plan.pending and all(plan.shares)


def _infer(cfg: Config, env, device, run_dir: Path, plan: Plan, task, watch: Watch):
    """This rank's inference phase, then the wait for every other rank's: the part and fragment
    files it wrote, and its stats record."""
    started = time.perf_counter()
    watch.start_work()
    total = plan.units[-1].stop if plan.units else 0
    left = sum(len(plan.units[u]) - len(plan.done_rows.get(u, ())) for u in plan.pending)
    progress = Progress(env, total, total - left, cfg.log)
    try:
        done, stats = [], Throughput()
        if task is not None:
            loop = stream_units if isinstance(task, EngineTask) else run_units
            done, stats = loop(cfg, env, run_dir, plan, task, watch, progress.reporter.batch_done)
        counts = {
            **dataclasses.asdict(stats),
            "rows": progress.reporter.counts.rows,
            "errors": progress.reporter.counts.errors,
        }
        seconds = time.perf_counter() - started
        record = save_rank_stats(run_dir, env.rank, counts, seconds, device)
        if watch.liveness is not None:
            watch.liveness.idle()
            watch.liveness.wait_all_done(watch.check_stop)
    except BaseException:
        progress.stop(final=False)
        raise
    progress.stop()
    return done, record


def _finish(
    cfg: Config,
    env: launch_env.LaunchEnv,
    clock: manifest.Stopwatch,
    ranks: list,
    run_dir: Path,
    plan: Plan,
    output: dict,
    task,
) -> None:
    """Rank 0: the summary table on the console and this attempt's entry in manifest.json.
    ``output``: the rows and errors written (and the sha256, when carried from the attempt
    that wrote it)."""
    log.info("summary (this attempt):\n%s", summary.table(ranks))
    entry = manifest.attempt(
        cfg=cfg,
        env=env,
        clock=clock,
        ranks=ranks,
        model=manifest.model_identity(model_path(cfg), getattr(task, "model", None)),
        run_dir=run_dir,
        output={
            **output,
            "path": str(plan.output.path),
            "format": plan.output.format,
            "state": rerun.output_state(run_dir, plan.output.files),
        },
    )
    log.info("manifest: %s", manifest.append_attempt(run_dir, entry))


def _merge(run_dir: Path, plan: Plan, inference_s: float, fence) -> MergeSummary:
    began = time.perf_counter()
    record_written(run_dir, plan.output)
    summary = merge_parts(run_dir, plan.units, plan.output.path, plan.output.format, fence)
    save_merge_stats(run_dir, time.perf_counter() - began)
    log.info(
        "done: %d input(s), %d written to %s, %d error(s)%s; %.1fs",
        plan.units[-1].stop,
        summary.written,
        plan.output.path,
        summary.errors,
        f" recorded in {summary.errors_path}" if summary.errors else "",
        inference_s + time.perf_counter() - began,
    )
    return summary


def main(cfg: DictConfig) -> None:
    """Validate and run Hydra's composed config. Errors a user can fix become one clear line
    naming the rank; each way of stopping early has its own exit code (see ``stopping``)."""
    error: BaseException | None = None
    try:
        config = to_config(cfg)
        if in_hydra_sweep():
            config, tag = sweep_job(config, cfg)
            if tag and os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":
                where = config.output.path or f"run.name={config.run.name}"
                print(f"ddpinfer: sweep point {tag}: {where}", file=sys.stderr, flush=True)
        run(config)
    except Exception as e:
        error = e
    end = ending(error)
    if end.traceback:
        traceback.print_exception(error)
    if end.line:
        report(end.line)
    code = end.code
    if in_hydra_sweep():
        end_sweep_job(code)
        return
    # Leave without running C++ destructors: torch.distributed's can abort the process at
    # interpreter exit ("terminate called without an active exception", seen with gloo about
    # once in twenty runs even after destroy_process_group) or hang when peers are gone, and the
    # exit code must be the one chosen here. Every result and log is on disk by now.
    exit_now(code)


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
