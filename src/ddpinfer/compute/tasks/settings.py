"""One input's generation settings: the task's (task.max_new_tokens, task.do_sample, ...), with
its row's own params (``data.params_field``) over them, with one meaning on both engines.

Greedy unless the task samples (task.do_sample) or the row sets a temperature above 0. The k-th
of a row's n answers samples from a stream seeded by ``row_seed(seed, row) + k`` (a row's own
``seed`` replaces ``row_seed``): vLLM seeds the k-th of n samples as seed + k too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddpinfer.config import GenerateTaskConfig


def row_seed(seed: int, row: int) -> int:
    """Each input's own random stream: the same whatever rank or batch the input lands in."""
    return (seed * 1_000_003 + row) % (2**63)


@dataclass(frozen=True)
class Settings:
    max_tokens: int
    temperature: float
    """0: greedy."""
    top_p: float
    top_k: int
    """0: off."""
    stop: tuple[str, ...]
    n: int
    seed: int
    """The first answer's stream; the k-th's is seed + k."""
    logprobs: int | None
    response_format: dict[str, Any] | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def stream_seed(self, k: int) -> int:
        return (self.seed + k) % (2**63)


def settings_for(
    cfg: GenerateTaskConfig, seed: int, row: int, params: dict[str, Any] | None
) -> Settings:
    p = params or {}
    temperature = p.get("temperature", cfg.temperature if cfg.do_sample else 0.0)
    top_k = p.get("top_k", cfg.top_k or 0)
    return Settings(
        max_tokens=p.get("max_tokens", cfg.max_new_tokens),
        temperature=float(temperature),
        top_p=float(p.get("top_p", 1.0 if cfg.top_p is None else cfg.top_p)),
        top_k=max(0, top_k),
        stop=tuple(p.get("stop", cfg.stop or ())),
        n=p.get("n", cfg.n),
        seed=p["seed"] % (2**63) if "seed" in p else row_seed(seed, row),
        logprobs=p.get("logprobs", cfg.logprobs),
        response_format=p.get("response_format", cfg.response_format),
    )


def vllm_sampling(s: Settings) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields with this meaning (structured outputs aside)."""
    args: dict[str, Any] = {"max_tokens": s.max_tokens, "n": s.n}
    if s.greedy:
        args["temperature"] = 0.0
    else:
        args.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)
    if s.stop:
        args["stop"] = list(s.stop)
    if s.logprobs is not None:
        args["logprobs"] = s.logprobs
    if s.response_format is not None:
        args["response_format"] = dict(s.response_format)  # StructuredOutputsParams fields
    return args
