"""The configuration schema: the single source of truth for every key.

YAML files under ``conf/`` only select values over these dataclasses; Hydra rejects a key that is
not declared here, and ``__post_init__`` rejects a value that is declared but wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from ddpinfer.config_help import help_node
from ddpinfer.errors import UserError


class ConfigError(UserError):
    """A configuration value that is declared in the schema but wrong."""


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "jsonl", "csv", "parquet", "text", "hf_dataset")
OUTPUT_FORMATS = ("auto", "jsonl", "parquet", "npy", "hf_dataset")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
PACKING = ("auto", "true", "false")
SHARED_FS = ("auto", "true", "false")
FAULT_KINDS = ("raise", "exit", "hang", "freeze")
ON_ERROR = ("fail", "skip")
ENGINES = ("hf", "vllm")
POOLINGS = ("mean", "cls")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _check_positive(key: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{key}={value} must be positive")


@dataclass(kw_only=True)
class ModelConfig:
    path: str | None = None
    """Local directory or hub id of the model. Unset: the task's bundled default (embed only)."""
    dtype: str = "auto"
    """auto (checkpoint dtype on CUDA, float32 on CPU) | float32 | bfloat16 | float16."""
    max_length: int | None = None
    """Inputs are truncated to this many tokens. Unset: the model's own limit."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run (needed by some architectures)."""
    attn_implementation: str = "auto"
    """auto (transformers' choice: sdpa where the model supports it) | sdpa | eager |
    flash_attention_2 (needs the flash-attn package and a CUDA device)."""
    compile: bool = False
    """Wrap the model in torch.compile(dynamic=True). Pays off for large models on GPUs; for small
    ones tokenization and Python dominate."""
    gpus_per_replica: int = 1
    """GPUs per model replica (= per process). 1: the whole model on cuda:{local_rank}. k > 1:
    each process owns k consecutive GPUs and the model is spread over them by a device map."""
    colocate: list[str] | None = None
    """With gpus_per_replica > 1: module names placed on the replica's first GPU, with the input
    embeddings (vision tower, projector, ...). Unset: the preset for the model's type."""
    max_memory: str | None = None
    """With gpus_per_replica > 1: weight budget per GPU when planning the device map (e.g. 30GiB),
    leaving the rest for activations and the KV cache. Unset: 80% of each GPU's free memory."""

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, DTYPES)
        _check_choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _check_positive("model.max_length", self.max_length)
        _check_positive("model.gpus_per_replica", self.gpus_per_replica)


@dataclass(kw_only=True)
class DataConfig:
    path: str | None = None
    """Input: a .jsonl, .csv, .parquet or text file (one input per line); a glob of files of one
    format, read in sorted order ('shards/*.parquet', quoted); or a folder written by
    datasets' save_to_disk. Unset: bundled sample."""
    format: str = "auto"
    """auto (from the file suffix; a save_to_disk folder is detected) | jsonl | csv | parquet |
    text | hf_dataset."""
    split: str | None = None
    """The split to read from a DatasetDict folder (save_to_disk of a DatasetDict). Unset: its
    only split; required when it has several."""
    text_field: str = "text"
    """Column or JSON key holding the input text (ignored for plain text files)."""
    id_field: str | None = None
    """Column or JSON key holding each input's id. Unset: the records' field named id if they
    have one (the log says so), else the 0-based row index (for text files, the line)."""
    unit_size: int | None = None
    """Rows per work unit: the grain of claiming, resume and part files. Unset: from the row
    count, a power of two from 64 to 4096 (about 256 units for large inputs), or the size an
    earlier run of the run directory used (rows appended since keep the finished units)."""
    image_field: str = "image"
    """task=image_text: column or JSON key holding one image path or a list of them (relative
    paths are resolved against the data file's folder)."""
    on_error: str = "fail"
    """A bad input record: fail (stop, naming file and line) | skip (record it in the run
    directory's errors.jsonl and go on)."""
    max_bad: float | None = None
    """Under data.on_error=skip, the most bad records a run goes on with: a fraction of the rows
    (below 1, e.g. 0.02) or a count (1 or more, e.g. 500). Unset: 10 % of the rows. A run whose
    every record is bad always stops."""

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, INPUT_FORMATS)
        _check_choice("data.on_error", self.on_error, ON_ERROR)
        _check_positive("data.unit_size", self.unit_size)
        if self.max_bad is not None and (
            self.max_bad < 0 or (self.max_bad >= 1 and self.max_bad != int(self.max_bad))
        ):
            raise ValueError(
                f"data.max_bad={self.max_bad} must be a fraction of the rows below 1 (0.05) or "
                "a whole count of records (500)"
            )


@dataclass(kw_only=True)
class OutputConfig:
    path: str | None = None
    """Final result file. Unset: output.<format> inside the run directory."""
    format: str = "auto"
    """auto (from the suffix of output.path, else jsonl) | jsonl | parquet | npy (embed only: one
    float32 [N, dim] matrix, ids beside it in <stem>.ids.jsonl) | hf_dataset (a folder for
    datasets.load_from_disk)."""
    shared_fs: str = "auto"
    """Do all nodes see rank 0's run directory? auto (probe it) | true | false (parts are sent
    to rank 0 over the process group)."""
    keep_fields: list[str] | None = None
    """Input fields copied into each output row as they are, beside the id, e.g. [title,lang]
    (npy: into <stem>.ids.jsonl). A record without one of them is a bad input."""

    def __post_init__(self) -> None:
        _check_choice("output.format", self.format, OUTPUT_FORMATS)
        keep = list(self.keep_fields or ())
        if "id" in keep or len(set(keep)) < len(keep) or not all(str(k).strip() for k in keep):
            raise ValueError(
                f"output.keep_fields={keep} must name distinct input fields other than 'id': "
                "every output row has its id already (the input's field named id, when the "
                "records have one; data.id_field names another)"
            )
        self.shared_fs = str(self.shared_fs).lower()  # `output.shared_fs=true` arrives as a bool
        _check_choice("output.shared_fs", self.shared_fs, SHARED_FS)


@dataclass(kw_only=True)
class RunConfig:
    root: str = "runs"
    """Folder under which run directories are made."""
    name: str | None = None
    """Run directory name under run.root. Unset: from output.path (or task, model and data)."""
    dir: str | None = None
    """Explicit run directory; overrides run.root and run.name."""
    timeout_s: float = 1800.0
    """How long any rank waits on the others in a collective before giving up."""
    fresh: bool = False
    """Discard the finished work in the run directory and start over (else a re-run resumes)."""
    heartbeat_s: float = 5.0
    """How often each rank tells the others it is alive."""
    dead_after_s: float = 60.0
    """A rank silent this long is taken as dead: the others stop and report it. Also how old
    the run directory's lock may get before another job takes it over."""
    stall_after_s: float | None = None
    """A rank that finishes no batch for this long is stalled (a hung filesystem read, a
    deadlock): the job stops, naming it. Unset: 10 x the slowest batch so far, at least 600."""

    def __post_init__(self) -> None:
        _check_positive("run.timeout_s", self.timeout_s)
        _check_positive("run.heartbeat_s", self.heartbeat_s)
        _check_positive("run.stall_after_s", self.stall_after_s)
        if self.dead_after_s < 2 * self.heartbeat_s:
            raise ValueError(
                f"run.dead_after_s={self.dead_after_s} must be at least twice "
                f"run.heartbeat_s={self.heartbeat_s}"
            )


@dataclass(kw_only=True)
class FaultConfig:
    """Deliberate failures, to test failure handling end to end. Leave unset in real runs."""

    rank: int | None = None
    """The rank that fails. Unset: no fault."""
    kind: str = "raise"
    """raise (an exception) | exit (os._exit(1), no clean-up) | hang (sleep; heartbeats go on) |
    freeze (SIGSTOP itself: like a lost node, silent but with its connections open)."""
    at_unit: int = 0
    """Fail before this rank's at_unit-th work unit (0: before the first)."""
    at_finish: bool = False
    """Fail after the work of every rank is done, before the part transfer (not before a unit)."""
    attempt: int | None = 0
    """Fail (and sleep fault.delay_s) only on this attempt (torchrun's restart count; SLURM's
    requeue count). Unset: on every attempt."""
    cuda_error_at_batch: int | None = None
    """On fault.rank (every rank when unset), the forward pass after this many batches raises a
    CUDA error: a transient failure, which fails its work unit, not its inputs."""
    oom_above: int | None = None
    """On every rank, a batch of more than this many inputs raises torch.OutOfMemoryError."""
    delay_s: float = 0.0
    """Sleep this long before each batch (to make a run slow enough to stop, or one rank slow),
    on fault.attempt's attempt."""
    slow_rank: int | None = None
    """Only this rank sleeps fault.delay_s. Unset: every rank does."""

    def __post_init__(self) -> None:
        _check_choice("fault.kind", self.kind, FAULT_KINDS)


@dataclass(kw_only=True)
class BatchConfig:
    """How inputs are grouped into forward passes. A batch holds at most ``batch_size`` rows and
    ``batch.max_tokens`` padded tokens (rows × its longest input; for generate, the longest
    prompt plus task.max_new_tokens)."""

    max_tokens: int | None = None
    """Padded tokens per forward pass (packed batches: real tokens). Unset: 16384 on CUDA, 1024
    on CPU (where the batch size hardly changes the speed and padding does)."""
    sort_rows: int = 16384
    """At most this many inputs are sorted by length together (a window) before they are cut
    into batches. Larger packs batches more tightly; every finished batch is kept whatever the
    window's size."""
    packing: str = "auto"
    """task=embed: true (a batch's inputs run concatenated, without padding: BERT and RoBERTa
    families; on CUDA in half precision through FlashAttention's varlen kernel) | false (padded
    batches) | auto (packed where that is faster: on CPU, for those models with sdpa attention;
    padded on CUDA). Packed, batch.max_tokens counts real tokens."""

    def __post_init__(self) -> None:
        self.packing = str(self.packing).lower()  # `batch.packing=true` arrives as a bool
        _check_choice("batch.packing", self.packing, PACKING)
        _check_positive("batch.max_tokens", self.max_tokens)
        _check_positive("batch.sort_rows", self.sort_rows)


@dataclass(kw_only=True)
class LogConfig:
    """What rank 0 shows on the console; every rank's full log is <run dir>/logs/rankN.log."""

    level: str = "INFO"
    """DEBUG | INFO | WARNING | ERROR."""
    progress: bool = True
    """One progress bar for the whole job on rank 0 (when stderr is a terminal). false, or no
    terminal: one progress line every log.progress_every_s instead."""
    progress_every_s: float = 30.0
    """Seconds between progress lines when there is no progress bar."""

    def __post_init__(self) -> None:
        self.level = str(self.level).upper()
        _check_choice("log.level", self.level, LOG_LEVELS)
        _check_positive("log.progress_every_s", self.progress_every_s)


@dataclass(kw_only=True)
class TaskConfig:
    name: str = MISSING
    """Which task runs; chosen with task=embed|classify|generate|image_text|custom."""


@dataclass(kw_only=True)
class EmbedTaskConfig(TaskConfig):
    name: str = "embed"
    pooling: str = "mean"
    """mean (masked mean over tokens) | cls (the first token's hidden state)."""
    normalize: bool = True
    """L2-normalise each embedding."""

    def __post_init__(self) -> None:
        _check_choice("task.pooling", self.pooling, POOLINGS)


@dataclass(kw_only=True)
class ClassifyTaskConfig(TaskConfig):
    name: str = "classify"
    top_k: int | None = None
    """Also record the k most likely labels with their scores."""

    def __post_init__(self) -> None:
        _check_positive("task.top_k", self.top_k)


@dataclass(kw_only=True)
class VllmConfig:
    """The vLLM engine each rank runs with task.engine=vllm (on that rank's GPUs only)."""

    gpu_memory_utilization: float = 0.9
    """Share of each of the replica's GPUs the engine may take: weights, activations and its
    KV cache."""
    max_model_len: int | None = None
    """Most tokens one request may hold, prompt and new tokens together; a longer prompt is a
    failed input. Unset: the model's own limit. Lower it when the KV cache does not fit."""
    kv_cache_gib: float = 4.0
    """vLLM's CPU build: memory for each engine's KV cache, in GiB."""
    max_num_seqs: int | None = None
    """Requests each engine runs at once. Unset: vLLM's default."""
    enforce_eager: bool | None = None
    """Run without CUDA graphs (faster start-up, slower steps). Unset: on GPU no; on CPU yes."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More vLLM EngineArgs, passed as they are, e.g. task.vllm.extra={model_impl:transformers}."""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"task.vllm.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]"
            )
        _check_positive("task.vllm.max_model_len", self.max_model_len)
        _check_positive("task.vllm.kv_cache_gib", self.kv_cache_gib)
        _check_positive("task.vllm.max_num_seqs", self.max_num_seqs)


@dataclass(kw_only=True)
class GenerateTaskConfig(TaskConfig):
    name: str = "generate"
    engine: str = "hf"
    """hf (transformers' generate over length-sorted batches) | vllm (one vLLM engine per rank,
    continuous batching: pip install -e '.[vllm]')."""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    max_new_tokens: int = 64
    do_sample: bool = False
    """Greedy decoding unless true. Sampling is seeded per input, so results do not depend on
    the world size or the batch an input lands in."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        _check_choice("task.engine", self.engine, ENGINES)
        _check_positive("task.max_new_tokens", self.max_new_tokens)
        sampling = {"task.temperature": self.temperature != 1.0, "task.top_k": self.top_k,
                    "task.top_p": self.top_p}  # fmt: skip
        if not self.do_sample and (given := [key for key, value in sampling.items() if value]):
            raise ValueError(
                f"{given[0]} applies to sampling only, and decoding is greedy: set "
                "task.do_sample=true to sample, or leave it out"
            )
        _check_positive("task.temperature", self.temperature)
        _check_positive("task.top_k", self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"task.top_p={self.top_p} must be in (0, 1]")


@dataclass(kw_only=True)
class ImageTextTaskConfig(GenerateTaskConfig):
    """Generation from image(s) and a prompt; the decoding keys are generate's."""

    name: str = "image_text"
    chat_template: bool = True
    """Pass each prompt through the processor's chat template as one user turn (the image(s),
    then the text) with the generation prompt. false: the text goes in as is, and must hold the
    model's image placeholders itself."""


@dataclass(kw_only=True)
class CustomTaskConfig(TaskConfig):
    """Your own class (see README, "Your own task"). Extra keys are passed through to it:
    `+task.my_key=value` arrives as cfg.task.my_key."""

    name: str = "custom"
    target: str = MISSING
    """The class to run, as package.module:ClassName (importable from the working directory or
    PYTHONPATH) or path/to/file.py:ClassName."""

    def __post_init__(self) -> None:
        module, _, name = self.target.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(
                f"task.target={self.target!r} must look like package.module:ClassName or "
                "path/to/file.py:ClassName"
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
        _check_positive("batch_size", self.batch_size)
        _check_choice("device", self.device, DEVICES)
        _check_positive("cpu_threads", self.cpu_threads)


TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    "embed": EmbedTaskConfig,
    "classify": ClassifyTaskConfig,
    "generate": GenerateTaskConfig,
    "image_text": ImageTextTaskConfig,
    "custom": CustomTaskConfig,
}


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; conf/config.yaml and conf/task/*.yaml build on it."""
    store = ConfigStore.instance()
    store.store(name="ddpinfer_schema", node=Config)
    for name, schema in TASK_SCHEMAS.items():  # not in the group `task`: its choices are conf/task/
        store.store(group="task_schema", name=name, node=schema)
    store.store(group="hydra/help", name="ddpinfer", node=help_node(Config, TASK_SCHEMAS))


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
