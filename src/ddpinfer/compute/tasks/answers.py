"""What each generated answer says about itself, the same on every engine: its text, why it
ended (``finish_reason``: ``stop`` for an end-of-sequence token or a stop string, ``length`` for
the token limit) and what it cost (``prompt_tokens``, ``completion_tokens``), as OpenAI and vLLM
report them: the completion counts the end-of-sequence token it stopped on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ANSWER_COLUMNS = ("generated_text", "finish_reason", "prompt_tokens", "completion_tokens")
"""The columns every generate and image_text row has (``logprobs`` too, when asked for)."""


@dataclass
class Answer:
    """One generated answer."""

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None
    """OpenAI's ``logprobs.content``: one entry per generated token (None: not asked for)."""


@dataclass(frozen=True)
class Shape:
    """The output columns' shape, the same for every row of a run (part files are columnar)."""

    listed: bool = False
    """generated_text, finish_reason and logprobs as lists of n (task.n > 1)."""
    logprobs: bool = False
    """A logprobs column (task.logprobs set, or rows may ask for it: null where one did not)."""


@dataclass
class Answers:
    """A prompt's answers (``n`` of them: one unless task.n or a row's n says more)."""

    prompt_tokens: int
    shape: Shape = field(default_factory=Shape)
    answers: list[Answer] = field(default_factory=list)

    def columns(self) -> dict[str, Any]:
        """One output row's values: lists of n for the answers' own fields when listed."""

        def each(values: list[Any]) -> Any:
            return values if self.shape.listed else values[0]

        row = {
            "generated_text": each([a.text for a in self.answers]),
            "finish_reason": each([a.finish_reason for a in self.answers]),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": sum(a.completion_tokens for a in self.answers),
        }
        if self.shape.logprobs:
            row["logprobs"] = each([a.logprobs for a in self.answers])
        return row


def eos_ids(value: int | Sequence[int] | None) -> frozenset[int]:
    """A generation config's ``eos_token_id`` (one id, a list, or none) as a set."""
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, int) else value)


def answer_length(token_ids: Sequence[int], eos: frozenset[int]) -> tuple[int, bool]:
    """How many of ``token_ids`` the answer holds (up to and including its first
    end-of-sequence token: what follows is padding), and whether it ended on one."""
    for i, token in enumerate(token_ids):
        if token in eos:
            return i + 1, True
    return len(token_ids), False


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string it holds, and whether it held one (OpenAI and
    vLLM leave the stop string out of the answer)."""
    cuts = [at for s in stop if s and (at := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def logprobs_content(
    decode: Any, token_ids: Sequence[int], steps: Sequence[dict[int, float]], top: int
) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content``: for each generated token, its text, logprob and UTF-8
    bytes, and the ``top`` most likely tokens at that step with theirs. ``steps[t]`` maps token
    ids to logprobs at step t (the chosen token's among them); ``decode(id)`` is a token's text."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = decode(token)
        return {"token": text, "logprob": float(logprob), "bytes": list(text.encode())}

    content = []
    for token, step in zip(token_ids, steps, strict=False):
        best = sorted(step.items(), key=lambda kv: -kv[1])[:top]
        content.append({**entry(token, step[token]), "top_logprobs": [entry(*kv) for kv in best]})
    return content
