"""The task sections of the schema: one dataclass per task (`task=embed|classify|...`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ddpinfer.config import request_settings
from ddpinfer.config.schema import (
    ENGINES,
    POOLINGS,
    PRECISIONS,
    check_choice,
    check_positive,
)


@dataclass(kw_only=True)
class TaskConfig:
    name: str = MISSING
    """Which task runs; chosen with task=embed|classify|score|generate|image_text|custom."""


@dataclass(kw_only=True)
class EmbedTaskConfig(TaskConfig):
    """Names follow SentenceTransformer.encode's arguments; a sentence-transformers checkpoint
    (a folder with modules.json) runs its own modules, as encode does."""

    name: str = "embed"
    pooling: str | None = None
    """mean | cls | max | lasttoken | mean_sqrt_len_tokens | weightedmean. Unset: the
    checkpoint's Pooling module (sentence-transformers folders), else mean."""
    normalize: bool | None = None
    """L2-normalise each embedding last (encode's normalize_embeddings). Unset: true for plain
    transformers checkpoints; a sentence-transformers one normalises where its modules say."""
    prompt: str | None = None
    """Text put before every input (encode's prompt)."""
    prompt_name: str | None = None
    """A prompt of the model's config_sentence_transformers.json by name (encode's
    prompt_name). Neither prompt nor prompt_name: the model's default_prompt_name, if any."""
    include_prompt: bool | None = None
    """false: the prompt's tokens are left out of pooling. Unset: the checkpoint's Pooling
    config (true when it has none)."""
    truncate_dim: int | None = None
    """Keep the first k dimensions (Matryoshka models), before normalize. Unset: the model's
    own truncate_dim, if any."""
    precision: str = "float32"
    """float32 | float16 | int8 | uint8 | binary | ubinary (sentence-transformers'
    quantize_embeddings; binary and ubinary pack 8 dimensions a byte)."""
    ranges: str | None = None
    """int8 and uint8: a .npy file of shape [2, dim], each dimension's minimum and maximum
    (quantize_embeddings' ranges)."""

    def __post_init__(self) -> None:
        if self.pooling is not None:
            check_choice("task.pooling", self.pooling, POOLINGS)
        check_choice("task.precision", self.precision, PRECISIONS)
        check_positive("task.truncate_dim", self.truncate_dim)
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError(
                "task.prompt and task.prompt_name are both set: give one (the text itself, or "
                "the name of one of the model's prompts)"
            )
        if self.precision.endswith("int8") and not self.ranges:
            raise ValueError(
                f"task.precision={self.precision} needs each dimension's range: HINT: "
                "task.ranges=<file.npy> holding np.stack([emb.min(0), emb.max(0)]) of "
                "float32 embeddings of a sample (ranges from one rank's rows would differ "
                "between world sizes)"
            )
        if self.ranges and not self.precision.endswith("int8"):
            raise ValueError(
                f"task.ranges applies to task.precision=int8|uint8 only, not {self.precision}"
            )


@dataclass(kw_only=True)
class ClassifyTaskConfig(TaskConfig):
    name: str = "classify"
    top_k: int | None = None
    """Also record the k most likely labels with their scores."""

    def __post_init__(self) -> None:
        check_positive("task.top_k", self.top_k)


@dataclass(kw_only=True)
class ScoreTaskConfig(TaskConfig):
    """A cross-encoder (reranker) scoring each (data.text_field, data.pair_field) pair, as
    CrossEncoder.predict does."""

    name: str = "score"
    prompt: str | None = None
    """Text put before each pair's first text (predict's prompt)."""
    prompt_name: str | None = None
    """A prompt of the model's config_sentence_transformers.json by name. Neither: the model's
    default_prompt_name, if any."""
    apply_softmax: bool = False
    """Softmax over a multi-label model's scores, after its activation (predict's
    apply_softmax)."""

    def __post_init__(self) -> None:
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("task.prompt and task.prompt_name are both set: give one")


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
        check_positive("task.vllm.max_model_len", self.max_model_len)
        check_positive("task.vllm.kv_cache_gib", self.kv_cache_gib)
        check_positive("task.vllm.max_num_seqs", self.max_num_seqs)


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
    # --- chat (#30) ---
    chat_template: bool = False
    """Wrap each plain-text prompt in the tokenizer's chat template as one user turn, with the
    generation prompt (data.messages_field: chat messages always go through it)."""
    system_prompt: str | None = None
    """A system turn put before each chat (one that begins with its own system turn keeps it)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """More variables for the chat template (task.chat_template_kwargs.enable_thinking=false)."""
    # --- per-request settings (#30); a row's data.params_field overrides each ---
    stop: list[str] | None = None
    """Stop strings: the answer ends before the first one it generates (finish_reason stop)."""
    n: int = 1
    """Answers per prompt, each from its own stream seeded by (seed, row, k): generated_text
    and finish_reason become lists of n."""
    logprobs: int | None = None
    """Record each generated token's logprob and the k most likely tokens' (0: the chosen
    token's only), in OpenAI's logprobs.content shape."""
    response_format: Any = None
    """Constrain the answer: a JSON schema (inline, or @file.json), a regex, or a list of
    choices ([yes,no])."""

    def __post_init__(self) -> None:
        check_choice("task.engine", self.engine, ENGINES)
        check_positive("task.max_new_tokens", self.max_new_tokens)
        check_positive("task.n", self.n)
        self.stop = _checked("task.stop", request_settings.stop_strings, self.stop) or None
        self.response_format = _checked(
            "task.response_format", request_settings.response_format, self.response_format
        )
        if (
            self.logprobs is not None
            and not 0 <= self.logprobs <= request_settings.MAX_TOP_LOGPROBS
        ):
            raise ValueError(f"task.logprobs={self.logprobs} must be in [0, 20]")
        sampling = {"task.temperature": self.temperature != 1.0, "task.top_k": self.top_k,
                    "task.top_p": self.top_p}  # fmt: skip
        if not self.do_sample and (given := [key for key, value in sampling.items() if value]):
            raise ValueError(
                f"{given[0]} applies to sampling only, and decoding is greedy: set "
                "task.do_sample=true to sample, or leave it out"
            )
        check_positive("task.temperature", self.temperature)
        check_positive("task.top_k", self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"task.top_p={self.top_p} must be in (0, 1]")


def _checked(key: str, check: Any, value: Any) -> Any:
    try:
        return check(value)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


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
