"""Hydra sweeps (``-m``): one run directory and one output per sweep point.

``python launch/infer.py -m task=classify task.top_k=1,2 output.path=k.jsonl`` runs two jobs of
one command line; left as they are, both would use the run directory and output of
``k.jsonl``, and the second would be refused as "a different run". So, when a sweep varies
anything but the output's name, each job's output (or, without one, its run name) takes the
values it sweeps: ``k.task.top_k=1.jsonl`` and ``k.task.top_k=2.jsonl``. A name that
already differs per point is kept exactly as given: a sweep over ``output.path`` (or
``run.name``, ``run.dir``), or an ``output.path`` / ``run.name`` that interpolates a swept key or
the job (``output.path=k_${task.top_k}.jsonl``, ``k-${hydra:job.num}.jsonl``). Only the process
that parsed the command line knows what it sweeps (Hydra's basic launcher runs the jobs there);
a launcher plugin that runs jobs elsewhere (submitit) needs per-job names in the command:
``output.path=k-${hydra:job.num}.jsonl``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ddpinfer.config import Config
from ddpinfer.launch.run_dir import derived_run_name

if TYPE_CHECKING:
    from omegaconf import DictConfig

OWN_NAMES = {"output.path", "run.name", "run.dir"}
PER_JOB = {"hydra:job.num", "hydra:job.id", "hydra:job.override_dirname"}
"""Hydra's values that differ from one job of a sweep to the next."""


def swept_keys(argv: list[str]) -> set[str]:
    """The keys a command line sweeps (``key=a,b``, ``key=range(...)``, ...), Hydra's own aside."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a])
    except Exception:  # not a command line Hydra parses (a launcher's own process)
        return set()
    keys = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    return {k for k in keys if not k.startswith("hydra")}


def job_values(swept: set[str]) -> dict[str, str]:
    """This job's value of each swept key (from Hydra's record of the job's overrides)."""
    from hydra.core.hydra_config import HydraConfig

    values = {}
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in swept:
            values[key.lstrip("+~")] = value
    return values


def names_its_point(raw: str | None, swept: set[str]) -> bool:
    """Does ``raw`` (a value as written, before interpolation) interpolate a swept key or one of
    Hydra's per-job values, so that it already differs from one sweep point to the next?"""
    refs = re.findall(r"\$\{\s*([^}]*?)\s*\}", raw or "")
    return any(ref in swept or ref in PER_JOB for ref in refs)


def _tagged(path: str, tag: str) -> str:
    named = Path(path)
    if named.suffix:
        return str(named.with_name(f"{named.stem}.{tag}{named.suffix}"))
    return str(named.with_name(f"{named.name}.{tag}"))


def per_job(
    config: Config, swept: set[str], values: dict[str, str], own: frozenset[str] = frozenset()
) -> tuple[Config, str | None]:
    """``config`` with this job's own output (or run name), and the tag that names it; as it
    is (tag None) when nothing is swept, the sweep names its own outputs, or the names in
    ``own`` (``output.path``, ``run.name``: they interpolate the point) already differ."""
    if not swept or swept & OWN_NAMES or not values:
        return config, None
    tag = re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", ",".join(f"{k}={values[k]}" for k in sorted(values)))
    output, run = config.output, config.run
    if output.path and "output.path" not in own:
        output = dataclasses.replace(output, path=_tagged(output.path, tag))
    if run.name and "run.name" not in own:
        run = dataclasses.replace(run, name=f"{run.name}.{tag}")
    elif not run.name and not output.path:
        run = dataclasses.replace(run, name=f"{derived_run_name(config)}.{tag}")
    if output is config.output and run is config.run:
        return config, None
    return dataclasses.replace(config, output=output, run=run), tag


def written_names(cfg: DictConfig | None) -> dict[str, str | None]:
    """``output.path`` and ``run.name`` as written in Hydra's composed config ``cfg``, before
    interpolation (the typed config holds them resolved)."""
    from omegaconf import OmegaConf

    if cfg is None:
        return {}
    output = OmegaConf.to_container(cfg.output, resolve=False)
    run = OmegaConf.to_container(cfg.run, resolve=False)
    return {"output.path": output.get("path"), "run.name": run.get("name")}


def sweep_job(config: Config, cfg: DictConfig | None = None) -> tuple[Config, str | None]:
    """Under ``-m``: this job's config with names of its own (see the module's doc); ``cfg`` is
    Hydra's composed config, where the names are read as written."""
    swept = swept_keys(sys.argv[1:])
    own = frozenset(k for k, raw in written_names(cfg).items() if names_its_point(raw, swept))
    return per_job(config, swept, job_values(swept) if swept else {}, own)
