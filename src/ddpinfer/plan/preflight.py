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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ddpinfer.config import Config
from ddpinfer.errors import UserError
from ddpinfer.inputs import SAMPLE_DATA, check_bad_share
from ddpinfer.inputs import readers as inputs
from ddpinfer.inputs import scan as input_scan
from ddpinfer.launch import LaunchEnv, ProcessGroup, agreed
from ddpinfer.plan import fingerprint, finished, work_units
from ddpinfer.plan.held_parts import assign_held_parts, ranks_sharing_run_dir, reconcile_held_parts
from ddpinfer.plan.outputs import Output, check_output, resolve_output
from ddpinfer.plan.st_needs import check_st_task
from ddpinfer.plan.task_needs import (
    check_engine,
    check_keep_fields,
    check_model_path,
    input_fields,
    model_path,
)
from ddpinfer.rundir.atomic import atomic_text
from ddpinfer.rundir.parts import parts_dir, unit_files

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


def input_spec(cfg: Config) -> inputs.InputSpec:
    return inputs.open_spec(
        cfg.data.path or str(SAMPLE_DATA),
        cfg.data.format,
        cfg.data.text_field,
        cfg.data.id_field,
        skip_bad=cfg.data.on_error == "skip",
        fields=input_fields(cfg),
        split=cfg.data.split,
        keep=tuple(cfg.output.keep_fields or ()),
    )


def _local_checks(cfg: Config, env: LaunchEnv, run_dir: Path) -> tuple[inputs.InputSpec, Output]:
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


def _start_fresh(fresh: bool, env: LaunchEnv, run_dir: Path) -> bool:
    """Discard earlier work under run.fresh=true on a job's first attempt; True if it did."""
    if not fresh:
        return False
    if not env.is_first_attempt:  # a restart or requeue must resume the work it started fresh
        log.info(
            "run.fresh=true applies to a job's first attempt only; this is a later one "
            "(torchrun restart %d, SLURM requeue %d): resuming",
            env.restart_count,
            env.requeue_count,
        )
        return False
    log.info("run.fresh=true: discarding earlier work in %s", run_dir)
    shutil.rmtree(parts_dir(run_dir), ignore_errors=True)
    (run_dir / fingerprint.FINGERPRINT).unlink(missing_ok=True)
    (run_dir / "manifest.json").unlink(missing_ok=True)  # its attempts' work is thrown away
    return True


def _plan_on_main(
    cfg: Config, env: LaunchEnv, spec: inputs.InputSpec, run_dir: Path, remote_nodes: bool
) -> dict:
    started_fresh = _start_fresh(cfg.run.fresh, env, run_dir)
    # Content hashes per block of unit_size rows, or of BLOCK_ROWS rows when the unit size
    # follows from the row count (automatic sizes are multiples of it).
    earlier = _earlier_units(run_dir) if not cfg.data.unit_size else None
    scan = input_scan.scan(
        spec, cfg.data.unit_size or (earlier[1] if earlier else input_scan.BLOCK_ROWS)
    )
    if spec.skip_bad:
        check_bad_share(scan, cfg.data.max_bad, spec.source)
    unit_size = cfg.data.unit_size or (
        earlier[0] if earlier else work_units.auto_unit_size(scan.num_rows)
    )
    new = fingerprint.compute(cfg, spec, model_path(cfg), scan, unit_size)
    resumed, files = finished.reconcile(run_dir, new, unit_size)
    with atomic_text(run_dir / "config.yaml") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    units = work_units.plan_units(scan.num_rows, unit_size)
    done = finished.done_rows(files, units)
    pending = [i for i in range(len(units)) if i not in done or done[i] is not None]
    partial = {u: sorted(rows) for u, rows in done.items() if rows is not None}
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
    if resumed:
        rows_left = sum(len(units[u]) - len(partial.get(u, ())) for u in pending)
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
        "done_rows": partial,
        "bad_rows": scan.duplicates,
        "inputs_digest": scan.digest,
        # for nodes without rank 0's run directory, to check the parts they hold against
        "fingerprint": new if remote_nodes else None,
        "started_fresh": started_fresh,
    }


def _earlier_units(run_dir: Path) -> tuple[int, int] | None:
    """The unit size an earlier run of this directory used (with data.unit_size unset), and
    the rows per digest block it hashed: kept when rows were appended since, so that the units
    it finished are the same rows, hashed the same way, and keep their work."""
    stored = fingerprint.load(run_dir)
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


def _check_copy(spec: inputs.InputSpec, env: LaunchEnv, mine: str, rank0s: str) -> None:
    if mine != rank0s:
        raise inputs.InputError(
            f"data.path={spec.source} on {env.host} (node {env.node_rank}) holds other inputs "
            f"than rank 0's copy (content digest {mine} here, {rank0s} on rank 0), so ranks "
            "would compute from different data. HINT: copy the same input file(s) to every "
            "node, or put them on a filesystem they all share."
        )


def preflight(cfg: Config, env: LaunchEnv, group: ProcessGroup, run_dir: Path) -> Plan:
    spec, output = agreed(group, lambda: _local_checks(cfg, env, run_dir))
    shares = ranks_sharing_run_dir(group, run_dir, cfg.output.shared_fs)

    def plan_or_digest() -> dict | str | None:
        if env.is_main:
            return _plan_on_main(cfg, env, spec, run_dir, not all(shares))
        return input_scan.scan(spec).digest if _checks_own_copy(env, cfg.output.shared_fs) else None

    mine = agreed(group, plan_or_digest)
    plan = group.broadcast_object(mine if env.is_main else None)
    if env.is_distributed:
        digest = plan["inputs_digest"]
        own = mine if isinstance(mine, str) else None
        agreed(group, lambda: _check_copy(spec, env, own, digest) if own else None)
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
    mine = [path for unit in senders.get(env.rank, []) for path in files.get(unit, [])]
    return pending, done_rows, mine
