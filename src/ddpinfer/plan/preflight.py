"""Everything that can be checked before heavy work, agreed on by all ranks.

Each rank checks what it alone can see (its copy of the input file, the model folder, on rank 0
the output folder); then rank 0 reads every input record once, hashing them, checks the run
directory's fingerprint, and decides which work units are still to do, while one rank on every
other node hashes its node's copy of the input. Ranks exchange the outcome in small collectives,
so a bad setting stops every rank at once, each naming the rank that saw the problem, instead of
leaving the others waiting on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ddpinfer import faults
from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import SAMPLE_DATA, check_bad_share, scan_cache
from ddpinfer.inputs import readers as inputs
from ddpinfer.inputs import scan as input_scan
from ddpinfer.inputs.seek import SeekIndex
from ddpinfer.launch import LaunchEnv, ProcessGroup, agreed
from ddpinfer.launch.store_wait import after_every_rank
from ddpinfer.plan import fingerprint, finished, openai_batch_job, work_units
from ddpinfer.plan.held_parts import assign_held_parts, ranks_sharing_run_dir, reconcile_held_parts
from ddpinfer.plan.outputs import Output, check_output, resolve_output
from ddpinfer.plan.st_needs import check_st_task
from ddpinfer.plan.task_needs import (
    check_engine,
    check_keep_fields,
    check_model_path,
    digested_fields,
    input_fields,
    model_path,
    text_check,
)
from ddpinfer.rundir.atomic import atomic_text
from ddpinfer.rundir.parts import counted, unit_files
from ddpinfer.rundir.store import load_fingerprint

log = logging.getLogger("ddpinfer")


@dataclass(frozen=True)
class Plan:
    spec: inputs.InputSpec
    units: list[range]
    unit_size: int
    pending: list[int]
    """Units not finished by an earlier run, in order."""
    bad_rows: dict[int, str]
    """Rows not to run, with the reason (duplicate ids under data.on_error=skip)."""
    output: Output
    shares: list[bool]
    """For each rank, whether it sees rank 0's run directory (else it sends its parts)."""
    send_later: list[Path]
    """Part and fragment files this rank's node holds from an earlier attempt, to send to
    rank 0 at the end."""
    done_rows: dict[int, frozenset[int]] = field(default_factory=dict)
    """For pending units an earlier attempt left half done: the rows it finished."""
    seek: SeekIndex | None = None
    """Where each unit starts in a JSON Lines or text input: ranks seek to their windows."""


def input_spec(cfg: Config) -> inputs.InputSpec:
    return inputs.open_spec(
        cfg.data.path or str(SAMPLE_DATA),
        cfg.data.format,
        cfg.data.messages_field or cfg.data.text_field,
        cfg.data.id_field,
        skip_bad=cfg.data.on_error == "skip",
        fields=input_fields(cfg),
        split=cfg.data.split,
        keep=tuple(cfg.output.keep_fields or ()),
        text_check=text_check(cfg),
        digested=digested_fields(cfg),
    )


def _local_checks(cfg: Config, env: LaunchEnv, run_dir: Path) -> tuple[inputs.InputSpec, Output]:
    if openai_batch_job.adopt(cfg) is None:  # an OpenAI batch file sets what reads it
        openai_batch_job.check_output_format(cfg)
    output = resolve_output(cfg.output, run_dir)
    if output.format == "npy" and cfg.task.name != "embed":
        raise UserError(
            f"output.format=npy holds embeddings, but task={cfg.task.name}. "
            "HINT: use output.format=jsonl or parquet (or an output.path ending in one of those)."
        )
    spec = input_spec(cfg)
    if spec.id_detected and env.is_main:
        log.info(
            "data.id_field is unset and the records have a field named 'id': it is each "
            "output row's id (data.id_field=<field> names another)"
        )
    check_keep_fields(cfg)
    check_engine(cfg)
    check_model_path(model_path(cfg))
    check_st_task(cfg, model_path(cfg))
    if env.is_main:
        check_output(output, spec, run_dir)
    return spec, output


def _fresh_wanted(fresh: bool, env: LaunchEnv) -> bool:
    """run.fresh=true discards earlier work on a job's first attempt only."""
    if fresh and not env.is_first_attempt:  # a restart or requeue resumes the work it started
        log.info(
            "run.fresh=true applies to a job's first attempt only; this is a later one "
            "(torchrun restart %d, SLURM requeue %d): resuming",
            env.restart_count,
            env.requeue_count,
        )
    return fresh and env.is_first_attempt


@dataclass(frozen=True)
class _Draft:
    """Rank 0's plan before any file changes: what the scan and the checks found."""

    scan: input_scan.InputScan
    scanned: bool
    """True: the scan was made now (not taken from the cache), so settling stores it."""
    unit_size: int
    fingerprint: dict
    resume: finished.Resume


def _draft_on_main(cfg: Config, env: LaunchEnv, spec: inputs.InputSpec, run_dir: Path) -> _Draft:
    """Scan the inputs and check the run directory against them: reads only, so that a
    refusal here, or on another rank, leaves the run directory as it was."""
    fresh = _fresh_wanted(cfg.run.fresh, env)
    faults.before_scan(cfg.fault, env.attempt)
    # Content hashes per block of unit_size rows, or of BLOCK_ROWS rows when the unit size
    # follows from the row count (automatic sizes are multiples of it).
    earlier = _earlier_units(run_dir) if not (cfg.data.unit_size or fresh) else None
    scan, scanned = scan_cache.cached_scan(
        spec, cfg.data.unit_size or (earlier[1] if earlier else input_scan.BLOCK_ROWS), run_dir
    )
    if spec.skip_bad:
        check_bad_share(scan, cfg.data.max_bad, spec.source)
    unit_size = cfg.data.unit_size or (
        earlier[0] if earlier else work_units.auto_unit_size(scan.num_rows)
    )
    new = fingerprint.compute(cfg, spec, model_path(cfg), scan, unit_size)
    resume = finished.inspect(run_dir, new, cfg.run.fresh, env.is_first_attempt)
    return _Draft(scan, scanned, unit_size, new, resume)


def _settle_on_main(
    cfg: Config, draft: _Draft, spec: inputs.InputSpec, run_dir: Path, remote_nodes: bool
) -> dict:
    """Every check passed on every rank: make the run directory hold what this run keeps."""
    scan, unit_size, new = draft.scan, draft.unit_size, draft.fingerprint
    units = work_units.plan_units(scan.num_rows, unit_size)
    done = finished.settle(run_dir, draft.resume, new, units, unit_size)
    if draft.scanned:
        scan_cache.store(spec, run_dir, scan)
    with atomic_text(run_dir / "config.yaml") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    pending = done.pending(len(units))
    if scan.blank_lines:
        log.info(
            "%s: %d blank line(s) are no inputs; the ids are line numbers (from 0), so they "
            "still match the file's lines",
            spec.source,
            scan.blank_lines,
        )
    if scan.bad_rows:
        log.warning(
            "%d bad input(s) will be skipped and recorded in %s",
            scan.bad_rows,
            run_dir / "errors.jsonl",
        )
    if draft.resume.resumed:
        rows_left = done.rows_left(units)
        log.info(
            "resuming: %d of %d work unit(s) already done by an earlier run (%d of %d "
            "inputs); %d input(s) to do",
            len(units) - len(pending),
            len(units),
            scan.num_rows - rows_left,
            scan.num_rows,
            rows_left,
        )
    return {
        "num_rows": scan.num_rows,
        "unit_size": unit_size,
        "pending": pending,
        "done_rows": {u: sorted(rows) for u, rows in done.partial.items()},
        "bad_rows": scan.duplicates,
        "inputs_digest": scan.digest,
        # for nodes without rank 0's run directory, to check the parts they hold against
        "fingerprint": new if remote_nodes else None,
        "started_fresh": draft.resume.fresh,
        "seek": scan.seek.at_rows([u.start for u in units]) if scan.seek else None,
    }


def _earlier_units(run_dir: Path) -> tuple[int, int] | None:
    """The unit size an earlier run of this directory used (with data.unit_size unset), and
    the rows per digest block it hashed: kept when rows were appended since, so that the units
    it finished are the same rows, hashed the same way, and keep their work."""
    stored = load_fingerprint(run_dir)
    size = stored.get("unit_size") if stored else None
    if not isinstance(size, int) or size <= 0:
        return None
    block = stored.get(fingerprint.BLOCK_KEY)  # absent before ddpinfer stored it
    if not isinstance(block, int) or block <= 0:
        block = input_scan.BLOCK_ROWS if size % input_scan.BLOCK_ROWS == 0 else size
    return size, block


def _checks_own_copy(env: LaunchEnv, shared_fs: str) -> bool:
    """One rank per node other than rank 0's checks its node's copy of the input (skipped when
    output.shared_fs=true says every node reads the same file)."""
    return not env.is_main and env.local_rank == 0 and env.node_rank != 0 and shared_fs != "true"


def _file_ids(spec: inputs.InputSpec) -> list[tuple[str, int, int, int]]:
    """The input files as a filesystem names them: path, size, mtime and inode. Equal on two
    nodes that share rank 0's run directory, they are one file on a shared filesystem (a
    copy has another inode, and rarely the same mtime to the nanosecond)."""
    ids = []
    for path in spec.files:
        info = path.stat()
        ids.append((str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino))
    return ids


def _check_copy(spec: inputs.InputSpec, env: LaunchEnv, mine: str, rank0s: str) -> None:
    if mine != rank0s:
        raise inputs.InputError(
            f"data.path={spec.source} on {env.host} (node {env.node_rank}) holds other inputs "
            f"than rank 0's copy (content digest {mine} here, {rank0s} on rank 0), so ranks "
            "would compute from different data. HINT: copy the same input file(s) to every "
            "node, or put them on a filesystem they all share."
        )


def preflight(
    cfg: Config,
    env: LaunchEnv,
    group: ProcessGroup,
    run_dir: Path,
    check_stop: Callable[[], None] = lambda: None,
) -> Plan:
    """``check_stop`` raises the reason to stop (a dead rank) while ranks wait for the scan."""
    spec, output = agreed(group, lambda: _local_checks(cfg, env, run_dir))
    shares = ranks_sharing_run_dir(group, run_dir, cfg.output.shared_fs)
    own_copy = _checks_own_copy(env, cfg.output.shared_fs)
    if cfg.output.shared_fs == "auto" and env.is_distributed:
        rank0s = group.broadcast_object(_file_ids(spec) if env.is_main else None)
        if own_copy and shares[env.rank] and _file_ids(spec) == rank0s:
            own_copy = False  # probed: the very files rank 0 scans, on a shared filesystem
            log.info(
                "node %d reads rank 0's own copy of data.path (a shared filesystem): not "
                "scanned again",
                env.node_rank,
            )

    def draft_or_digest() -> _Draft | str | None:
        if env.is_main:
            return _draft_on_main(cfg, env, spec, run_dir)
        return input_scan.scan(spec).digest if own_copy else None

    # The others wait for rank 0's scan on the store, as long as it is alive: not in a
    # collective, which gives up after run.timeout_s however long the scan needs.
    mine = agreed(group, lambda: after_every_rank(env, "scanned", draft_or_digest, check_stop))
    if env.is_distributed:
        digest = group.broadcast_object(mine.scan.digest if env.is_main else None)  # type: ignore[union-attr]
        own = mine if isinstance(mine, str) else None
        agreed(group, lambda: _check_copy(spec, env, own, digest) if own else None)
    # every check passed on every rank: only now does rank 0 change the run directory
    settled = agreed(
        group,
        lambda: _settle_on_main(cfg, mine, spec, run_dir, not all(shares)) if env.is_main else None,  # type: ignore[arg-type]
    )
    plan = group.broadcast_object(settled if env.is_main else None)
    units = work_units.plan_units(plan["num_rows"], plan["unit_size"])
    pending, done_rows, send_later = plan["pending"], plan["done_rows"], []
    if not all(shares):
        pending, done_rows, send_later = _take_held_units(env, group, run_dir, shares, plan, units)
    log.info(
        "%d input(s) in %d work unit(s) of up to %d; %d unit(s) to run on %d rank(s)",
        plan["num_rows"],
        len(units),
        plan["unit_size"],
        len(pending),
        env.world_size,
    )
    return Plan(
        spec,
        units,
        plan["unit_size"],
        pending,
        plan["bad_rows"],
        output,
        shares,
        send_later,
        {unit: frozenset(rows) for unit, rows in done_rows.items()},
        plan["seek"],
    )


def _take_held_units(
    env: LaunchEnv,
    group: ProcessGroup,
    run_dir: Path,
    shares: list[bool],
    plan: dict,
    units: list[range],
) -> tuple[list[int], dict[int, list[int]], list[Path]]:
    """Work finished on nodes without rank 0's run directory in an earlier attempt (checked
    there against rank 0's fingerprint) is not recomputed: the node sends it at the end.
    Returns the units still to compute, the rows of them done, and the files this rank sends."""
    checks_node = not shares[env.rank] and env.local_rank == 0
    held = (
        reconcile_held_parts(run_dir, plan["fingerprint"], plan["started_fresh"], units)
        if checks_node
        else None
    )
    pending, done_rows, senders = assign_held_parts(
        plan["pending"], plan["done_rows"], group.all_gather_object(held), units
    )
    for rank, sent in senders.items() if env.is_main else ():
        log.info(
            "rank %d's node holds work on %d unit(s) from an earlier attempt: sent at the end, "
            "not recomputed",
            rank,
            len(sent),
        )
    files = unit_files(run_dir)
    mine = [path for unit in senders.get(env.rank, []) for path in counted(files.get(unit, []))]
    return pending, done_rows, mine
