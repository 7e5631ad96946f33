"""transformers' ``generate`` with per-row settings (``settings.Settings``) in one batch: each
row's own temperature, top-k and top-p and its own seeded stream (the Gumbel-max trick: the
argmax of log-probabilities plus Gumbel noise draws exactly from the softmax, so ``generate``
runs greedy search and a greedy row gets no noise), its own stop strings, and its own grammar
(xgrammar's matcher over the tokenizer's vocabulary). Rows of one batch may differ in all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ddpinfer.compute.tasks.answers import cut_at_stop
from ddpinfer.compute.tasks.settings import Settings


class PerRowSampling(LogitsProcessor):
    """Row i of the batch decodes with ``settings[i]`` from a generator seeded by ``seeds[i]``."""

    def __init__(self, settings: Sequence[Settings], seeds: Sequence[int], device: Any) -> None:
        self.settings = settings
        self.generators: list[torch.Generator | None] = []
        for s, seed in zip(settings, seeds, strict=True):
            g = None
            if not s.greedy:
                g = torch.Generator(device=device)
                g.manual_seed(seed)
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.log_softmax(scores.float(), dim=-1)
        for i, (s, g) in enumerate(zip(self.settings, self.generators, strict=True)):
            if g is None:
                continue
            row = scores[i : i + 1].float()
            if s.temperature != 1.0:
                row = TemperatureLogitsWarper(s.temperature)(input_ids[i : i + 1], row)
            if s.top_k:
                row = TopKLogitsWarper(s.top_k)(input_ids[i : i + 1], row)
            if s.top_p < 1.0:
                row = TopPLogitsWarper(s.top_p)(input_ids[i : i + 1], row)
            u = torch.rand(scores.shape[-1], generator=g, device=scores.device)
            gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1 - 1e-7)))
            out[i] = torch.log_softmax(row[0], dim=-1) + gumbel
        return out


class StopStrings(StoppingCriteria):
    """Row i is done once its new text holds one of its own stop strings; ``stopped[i]`` is
    then how many new tokens it has (the one completing the stop string included)."""

    def __init__(self, stops: Sequence[Sequence[str]], prompt_width: int, decoder: Any) -> None:
        self.stops = stops
        self.width = prompt_width
        self.decoder = decoder
        self.stopped: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, stop in enumerate(self.stops):
            if not stop:
                continue
            if i not in self.stopped:
                new = input_ids[i, self.width :].tolist()
                text = self.decoder.decode(new, skip_special_tokens=True)
                if cut_at_stop(text, stop)[1]:
                    self.stopped[i] = len(new)
            done[i] = i in self.stopped
        return done


class Grammars(LogitsProcessor):
    """Row i's tokens kept to ``grammars[i]`` (an xgrammar ``CompiledGrammar``, or None: free)."""

    def __init__(self, grammars: Sequence[Any], vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.mask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.mask.fill_(-1)  # every token allowed, until a matcher says otherwise
        for i, matcher in enumerate(self.matchers):
            if matcher is None or matcher.is_terminated():
                continue
            if self.started and not matcher.accept_token(int(input_ids[i, -1])):
                self.matchers[i] = None  # the row ended otherwise (a stop string): padding now
                continue
            matcher.fill_next_token_bitmask(self.mask, i)
        self.started = True
        scores = scores.float().cpu() if scores.device.type != "cuda" else scores
        self.xgr.apply_token_bitmask_inplace(scores, self.mask.to(scores.device))
        return scores


class GrammarCompiler:
    """Compiles each response format once per run (a batch of rows with one schema shares it)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler: Any = None
        self._cache: dict[str, Any] = {}

    def __call__(self, fmt: dict[str, Any] | None) -> Any:
        if fmt is None:
            return None
        import json

        key = json.dumps(fmt, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self._compile(fmt)
        return self._cache[key]

    def _compile(self, fmt: dict[str, Any]) -> Any:
        import json

        import xgrammar as xgr

        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgr.GrammarCompiler(info)
        if "json" in fmt:
            return self._compiler.compile_json_schema(json.dumps(fmt["json"]))
        if "regex" in fmt:
            return self._compiler.compile_regex(fmt["regex"])
        choices = " | ".join(json.dumps(c) for c in fmt["choice"])
        return self._compiler.compile_grammar(f"root ::= {choices}")
