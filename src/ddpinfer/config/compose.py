"""The whole ``Config``, its registration in Hydra's ConfigStore, and the composed config turned
into validated dataclasses (``to_config``)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from ddpinfer.config.help import help_node
from ddpinfer.config.schema import (
    DEVICES,
    BatchConfig,
    ConfigError,
    DataConfig,
    FaultConfig,
    LogConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    check_choice,
    check_positive,
)
from ddpinfer.config.tasks import (
    ClassifyTaskConfig,
    CustomTaskConfig,
    EmbedTaskConfig,
    GenerateTaskConfig,
    ImageTextTaskConfig,
    ScoreTaskConfig,
    TaskConfig,
)


@dataclass(kw_only=True)
class Config:
    task: Any = MISSING
    """One of the TaskConfig subclasses, selected through the config group `task`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    log: LogConfig = field(default_factory=LogConfig)
    batch_size: int = 256
    """At most this many inputs per forward pass (batch.max_tokens usually binds first)."""
    device: str = "auto"
    """auto (cuda:{local_rank} when CUDA is available, else cpu) | cpu | cuda."""
    cpu_threads: int | None = None
    """Torch threads per process on CPU. Unset: the node's cores divided by its processes."""
    seed: int = 0
    """Seed for sampling; each input draws from its own stream derived from this and its row."""

    def __post_init__(self) -> None:
        check_positive("batch_size", self.batch_size)
        check_choice("device", self.device, DEVICES)
        check_positive("cpu_threads", self.cpu_threads)


TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    "embed": EmbedTaskConfig,
    "classify": ClassifyTaskConfig,
    "score": ScoreTaskConfig,
    "generate": GenerateTaskConfig,
    "image_text": ImageTextTaskConfig,
    "custom": CustomTaskConfig,
}


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; conf/config.yaml and conf/task/*.yaml build on it."""
    store = ConfigStore.instance()
    store.store(name="ddpinfer_schema", node=Config)
    for name, schema in TASK_SCHEMAS.items():  # not in the group `task`: its choices are conf/task/
        store.store(group="task_schema", name=name, node=_open_dicts(schema))
    store.store(group="hydra/help", name="ddpinfer", node=help_node(Config, TASK_SCHEMAS))


OPEN_DICTS = ("chat_template_kwargs",)
"""Dict keys of a task that take keys of the user's own without a ``+``
(task.chat_template_kwargs.enable_thinking=false): they are passed on, not read by ddpinfer."""


def _open_dicts(schema: type) -> Any:
    """The task's schema, with its ``OPEN_DICTS`` open to new keys."""
    names = [n for n in OPEN_DICTS if n in schema.__dataclass_fields__]
    if not names:
        return schema
    node = OmegaConf.structured(schema)
    for name in names:
        OmegaConf.set_struct(node[name], False)
    return node


def to_config(cfg: DictConfig) -> Config:
    """Turn Hydra's composed config into validated dataclasses (running ``__post_init__``)."""
    if "hydra" in cfg:  # present when composed with return_hydra_config; not part of the schema
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        config = OmegaConf.to_object(cfg)
    except ValueError as e:  # raised by a schema's __post_init__, naming the key and value
        raise ConfigError(str(e)) from None
    except MissingMandatoryValue as e:
        raise ConfigError(
            f"{e.full_key} is required. HINT: set it on the command line: {e.full_key}=..."
        ) from None
    if not isinstance(config, Config):
        raise TypeError(f"expected the composed config to be a Config, got {type(config).__name__}")
    if not isinstance(config.task, TaskConfig):
        raise ConfigError(f"task must be chosen: task={'|'.join(TASK_SCHEMAS)}")
    _refuse_extra_keys(config, "")
    return config


def _refuse_extra_keys(node: Any, prefix: str) -> None:
    """Keys added with ``+key=value`` that the schema does not declare: only a custom task may
    have them (its own settings); anywhere else they are typos, refused like any other."""
    if not dataclasses.is_dataclass(node):
        return
    declared = [f.name for f in dataclasses.fields(node)]
    extra = [k for k in vars(node) if k not in declared]
    if extra and not isinstance(node, CustomTaskConfig):
        raise ConfigError(_extra_key_message(node, prefix, extra[0], declared))
    for name in declared:
        _refuse_extra_keys(getattr(node, name), f"{prefix}{name}.")


def _extra_key_message(node: Any, prefix: str, extra: str, declared: list[str]) -> str:
    keys = [k for k in declared if k != "name"]
    close = difflib.get_close_matches(extra, keys, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"its keys: {', '.join(keys)}"
    where = prefix.rstrip(".") or "the config"
    if isinstance(node, TaskConfig):
        where = f"task={node.name}"
        owners = [n for n, s in TASK_SCHEMAS.items() if extra in s.__dataclass_fields__]
        if owners:
            hint = f"{prefix}{extra} is a key of task={', '.join(owners)}"
    return (
        f"+{prefix}{extra} is not a key of {where}, so it would be ignored. HINT: {hint} (only "
        "task=custom takes keys of its own)"
    )
