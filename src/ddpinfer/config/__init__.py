"""The configuration: the schema is the single source of truth for every key.

YAML files under ``conf/`` only select values over these dataclasses; Hydra rejects a key that is
not declared here, and ``__post_init__`` rejects a value that is declared but wrong.
``schema.py`` holds the sections and their checks, ``tasks.py`` one section per task,
``compose.py`` the whole ``Config`` and its validation, ``help.py`` the ``--help`` text.
"""

from ddpinfer.config.compose import (
    TASK_SCHEMAS,
    Config,
    register_configs,
    to_config,
)
from ddpinfer.config.schema import (
    ATTN_IMPLEMENTATIONS,
    DEVICES,
    DTYPES,
    ENGINES,
    FAULT_KINDS,
    INPUT_FORMATS,
    LOG_LEVELS,
    ON_ERROR,
    OUTPUT_FORMATS,
    PACKING,
    POOLINGS,
    SHARED_FS,
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
    TaskConfig,
    VllmConfig,
)

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "BatchConfig",
    "ClassifyTaskConfig",
    "Config",
    "ConfigError",
    "CustomTaskConfig",
    "DEVICES",
    "DTYPES",
    "DataConfig",
    "ENGINES",
    "EmbedTaskConfig",
    "FAULT_KINDS",
    "FaultConfig",
    "GenerateTaskConfig",
    "INPUT_FORMATS",
    "ImageTextTaskConfig",
    "LOG_LEVELS",
    "LogConfig",
    "ModelConfig",
    "ON_ERROR",
    "OUTPUT_FORMATS",
    "OutputConfig",
    "PACKING",
    "POOLINGS",
    "RunConfig",
    "SHARED_FS",
    "TASK_SCHEMAS",
    "TaskConfig",
    "VllmConfig",
    "check_choice",
    "check_positive",
    "register_configs",
    "to_config",
]
