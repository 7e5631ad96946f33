"""Text generation: AutoModelForCausalLM with left padding. Record: {"generated_text"} (new text).

Greedy by default. With task.do_sample=true, each input samples from its own random stream,
seeded by ``seed`` and its row number, through the Gumbel-max trick (argmax of log-probabilities
plus Gumbel noise draws exactly from the softmax). Which rank or batch an input lands in then
changes nothing: the same command gives the same text on 1 or 64 GPUs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ddpinfer.compute import model_loading
from ddpinfer.compute.tasks.base import Columns, Task
from ddpinfer.config import Config, GenerateTaskConfig


class PerRowGumbelNoise(LogitsProcessor):
    """Adds Gumbel noise from one generator per input; greedy search then samples."""

    def __init__(self, seed: int, rows: Sequence[int], device: torch.device) -> None:
        self.generators = []
        for row in rows:
            g = torch.Generator(device=device)
            g.manual_seed((seed * 1_000_003 + row) % (2**63))
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        u = torch.stack(
            [
                torch.rand(scores.shape[-1], generator=g, device=scores.device)
                for g in self.generators
            ]
        )
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1 - 1e-7)))
        return logp + gumbel


class GenerateTask(Task):
    padding_side = "left"

    def __init__(self, tokenizer, model, max_length, cfg: GenerateTaskConfig, seed: int) -> None:
        super().__init__(tokenizer, model, max_length)
        self.cfg = cfg
        self.seed = seed
        # Decoding runs on the compute thread while the next window is tokenized on another; a
        # fast tokenizer used from two threads at once can fail ("Already borrowed").
        self.decoder = copy.deepcopy(tokenizer)
        self.generation_config = copy.deepcopy(model.generation_config)
        # The checkpoint's own sampling defaults must not leak in: decoding is ours to choose.
        self.generation_config.update(
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            num_beams=1,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )

    def _sampling_processors(self, rows: Sequence[int]) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if not self.cfg.do_sample:
            return processors
        if self.cfg.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(self.cfg.temperature))
        if self.cfg.top_k:
            processors.append(TopKLogitsWarper(self.cfg.top_k))
        if self.cfg.top_p is not None and self.cfg.top_p < 1.0:
            processors.append(TopPLogitsWarper(self.cfg.top_p))
        processors.append(PerRowGumbelNoise(self.seed, rows, self.device))
        return processors

    def cost(self, item: Any) -> int:
        """The prompt and every token that may be generated after it."""
        return len(item) + self.cfg.max_new_tokens

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, torch.Tensor], rows: Sequence[int]) -> Columns:
        out = self.model.generate(
            **batch,
            generation_config=self.generation_config,
            logits_processor=self._sampling_processors(rows),
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts_out = self.decoder.batch_decode(new_tokens, skip_special_tokens=True)
        return {"generated_text": texts_out}


def build(cfg: Config, path: str, device: torch.device) -> GenerateTask:
    tokenizer = model_loading.load_tokenizer(cfg.model, path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model_loading.load_model(AutoModelForCausalLM, cfg.model, path, device)
    limit = model_loading.max_length(cfg.model, tokenizer)
    return GenerateTask(tokenizer, model, limit, cfg.task, cfg.seed)
