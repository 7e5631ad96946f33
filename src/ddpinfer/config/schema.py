"""The configuration schema's sections (model, data, output, run, fault, batch, log) and the checks
they share. The task sections are in ``tasks.py``, the whole ``Config`` in ``compose.py``.

YAML files under ``conf/`` only select values over these dataclasses; Hydra rejects a key that is
not declared here, and ``__post_init__`` rejects a value that is declared but wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpinfer.errors import UserError


class ConfigError(UserError):
    """A configuration value that is declared in the schema but wrong."""


DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
INPUT_FORMATS = ("auto", "jsonl", "csv", "parquet", "text", "hf_dataset", "openai_batch")
OUTPUT_FORMATS = ("auto", "jsonl", "parquet", "npy", "hf_dataset", "openai_batch")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
PACKING = ("auto", "true", "false")
SHARED_FS = ("auto", "true", "false")
FAULT_KINDS = ("raise", "exit", "hang", "freeze")
ON_ERROR = ("fail", "skip")
ENGINES = ("hf", "vllm")
POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean")
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(choices)}")


def check_positive(key: str, value: int | float | None) -> None:
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
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_positive("model.max_length", self.max_length)
        check_positive("model.gpus_per_replica", self.gpus_per_replica)


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
    messages_field: str | None = None
    """generate, image_text: column or JSON key holding each input as chat messages (OpenAI's
    list of {role, content}) instead of data.text_field's text; rendered with the model's chat
    template."""
    params_field: str | None = None
    """generate, image_text: column or JSON key holding each input's own settings, a dict of
    max_tokens, temperature, top_p, top_k, stop, n, seed, logprobs, top_logprobs and
    response_format overriding the task's (an unknown key makes a bad record)."""
    pair_field: str | None = None
    """task=score: column or JSON key holding each pair's second text (the first is
    data.text_field), e.g. the passage a query is scored against."""
    on_error: str = "fail"
    """A bad input record: fail (stop, naming file and line) | skip (record it in the run
    directory's errors.jsonl and go on)."""
    max_bad: float | None = None
    """Under data.on_error=skip, the most bad records a run goes on with: a fraction of the rows
    (below 1, e.g. 0.02) or a count (1 or more, e.g. 500). Unset: 10 % of the rows. A run whose
    every record is bad always stops."""

    def __post_init__(self) -> None:
        check_choice("data.format", self.format, INPUT_FORMATS)
        check_choice("data.on_error", self.on_error, ON_ERROR)
        check_positive("data.unit_size", self.unit_size)
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
        check_choice("output.format", self.format, OUTPUT_FORMATS)
        keep = list(self.keep_fields or ())
        if "id" in keep or len(set(keep)) < len(keep) or not all(str(k).strip() for k in keep):
            raise ValueError(
                f"output.keep_fields={keep} must name distinct input fields other than 'id': "
                "every output row has its id already (the input's field named id, when the "
                "records have one; data.id_field names another)"
            )
        self.shared_fs = str(self.shared_fs).lower()  # `output.shared_fs=true` arrives as a bool
        check_choice("output.shared_fs", self.shared_fs, SHARED_FS)


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
        check_positive("run.timeout_s", self.timeout_s)
        check_positive("run.heartbeat_s", self.heartbeat_s)
        check_positive("run.stall_after_s", self.stall_after_s)
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
    """Only this rank sleeps fault.delay_s (and waits for fault.hold_file). Unset: every rank."""
    hold_file: str | None = None
    """While this file exists, each batch waits before it starts (on fault.attempt's attempt):
    a test holds a run where it wants it, lock and heartbeats alive, and lets it go by deleting
    the file. Each rank logs once that it holds ("rank R holds before its batch B")."""
    write_hold_file: str | None = None
    """While this file exists, every write into the run directory (a journal record, a part)
    waits once it is prepared, right before it becomes visible and before the lock fence is
    checked (on fault.attempt's attempt). Each rank logs once "rank R holds before a write"."""
    scan_delay_s: float = 0.0
    """Rank 0 sleeps this long before its preflight scan (a scan of a very large input)."""

    def __post_init__(self) -> None:
        check_choice("fault.kind", self.kind, FAULT_KINDS)


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
        check_choice("batch.packing", self.packing, PACKING)
        check_positive("batch.max_tokens", self.max_tokens)
        check_positive("batch.sort_rows", self.sort_rows)


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
        check_choice("log.level", self.level, LOG_LEVELS)
        check_positive("log.progress_every_s", self.progress_every_s)
