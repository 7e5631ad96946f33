"""Hydra sweeps (``-m``): one run directory and one output per sweep point.

``python launch/infer.py -m task=classify task.top_k=1,2 output.path=k.jsonl`` runs two jobs of
one command line; left as they are, both would use the run directory and output of
``k.jsonl``, and the second would be refused as "a different run". So, when a sweep varies
anything but the output's name, each job's output (or, without one, its run name) takes the
values it sweeps: ``k.task.top_k=1.jsonl`` and ``k.task.top_k=2.jsonl``. A sweep over
``output.path`` (or ``run.name``, ``run.dir``) names its outputs itself and is left alone. Only
the process that parsed the command line knows what it sweeps (Hydra's basic launcher runs the
jobs there); a launcher plugin that runs jobs elsewhere (submitit) needs per-job names in the
command: ``output.path=k-${hydra:job.num}.jsonl``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from ddpinfer.config import Config
from ddpinfer.launch.run_dir import derived_run_name

OWN_NAMES = {"output.path", "run.name", "run.dir"}


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


def per_job(config: Config, swept: set[str], values: dict[str, str]) -> tuple[Config, str | None]:
    """``config`` with this job's own output (or run name), and the tag that names it; as it
    is (tag None) when nothing is swept or the sweep names its own outputs."""
    if not swept or swept & OWN_NAMES or not values:
        return config, None
    tag = re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", ",".join(f"{k}={values[k]}" for k in sorted(values)))
    if config.output.path:
        path = Path(config.output.path)
        named = (
            path.with_name(f"{path.stem}.{tag}{path.suffix}")
            if path.suffix
            else path.with_name(f"{path.name}.{tag}")
        )
        output = dataclasses.replace(config.output, path=str(named))
        return dataclasses.replace(config, output=output), tag
    run = dataclasses.replace(
        config.run, name=f"{config.run.name or derived_run_name(config)}.{tag}"
    )
    return dataclasses.replace(config, run=run), tag


def sweep_job(config: Config) -> tuple[Config, str | None]:
    """Under ``-m``: this job's config with names of its own (see the module's doc)."""
    swept = swept_keys(sys.argv[1:])
    return per_job(config, swept, job_values(swept) if swept else {})
