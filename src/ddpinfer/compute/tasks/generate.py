"""Text generation: AutoModelForCausalLM with left padding. Record: {"generated_text"} (new text),
"finish_reason", "prompt_tokens" and "completion_tokens" (``answers``).

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
from ddpinfer.compute.tasks.answers import Answer, Answers, answer_length, eos_ids
from ddpinfer.compute.tasks.base import Columns, Task, rows_to_columns
from ddpinfer.compute.tasks.prompts import PromptIds
from ddpinfer.config import Config, GenerateTaskConfig
from ddpinfer.inputs import Row


def row_seed(seed: int, row: int) -> int:
    """Each input's own random stream: the same whatever rank or batch the input lands in."""
    return (seed * 1_000_003 + row) % (2**63)


class PerRowGumbelNoise(LogitsProcessor):
    """Adds Gumbel noise from one generator per input; greedy search then samples."""

    def __init__(self, seed: int, rows: Sequence[int], device: torch.device) -> None:
        self.generators = []
        for row in rows:
            g = torch.Generator(device=device)
            g.manual_seed(row_seed(seed, row))
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

    def __init__(
        self, tokenizer, model, max_length, cfg: GenerateTaskConfig, seed: int, messages=False
    ) -> None:
        super().__init__(tokenizer, model, max_length)
        self.cfg = cfg
        self.seed = seed
        self.prompt_ids = PromptIds(tokenizer, max_length, cfg, messages)
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
        self.eos = eos_ids(self.generation_config.eos_token_id)

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

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        return self.prompt_ids(rows)

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
        new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        rows_out = [
            Answers(int(width), [self._answer(tokens)]).columns()
            for width, tokens in zip(prompt_tokens, new_tokens, strict=True)
        ]
        return rows_to_columns(rows_out)

    def _answer(self, token_ids: list[int]) -> Answer:
        length, ended = answer_length(token_ids, self.eos)
        text = self.decoder.decode(token_ids[:length], skip_special_tokens=True)
        return Answer(text, "stop" if ended else "length", length)


class EnginePrompts:
    """task=generate through an engine (task.engine=vllm): each input's prompt as token ids,
    tokenized exactly as for transformers' ``generate``; its decoding settings with the same
    meaning (greedy; or sampled from the input's own seeded stream, with temperature, top-k and
    top-p); and the text of the tokens it generated, decoded the same way."""

    images_per_prompt: int | None = None

    def __init__(
        self, tokenizer: Any, max_length: int | None, cfg: GenerateTaskConfig, seed: int,
        messages: bool = False,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cfg = cfg
        self.seed = seed
        self.prompt_ids = PromptIds(tokenizer, max_length, cfg, messages)

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        """A prompt per row (or the exception that says why it has none)."""
        ids = self.prompt_ids(rows)
        return [i if isinstance(i, Exception) else {"prompt_token_ids": i} for i in ids]

    def prompt_tokens(self, prompt: Any) -> int:
        return len(prompt.get("prompt_token_ids", ()))

    def sampling(self, row: int) -> dict[str, Any]:
        """The engine's sampling settings for one input (vLLM's ``SamplingParams`` fields)."""
        cfg = self.cfg
        if not cfg.do_sample:
            return {"temperature": 0.0, "max_tokens": cfg.max_new_tokens}
        return {
            "temperature": cfg.temperature,
            "top_k": cfg.top_k or 0,
            "top_p": 1.0 if cfg.top_p is None else cfg.top_p,
            "seed": row_seed(self.seed, row),
            "max_tokens": cfg.max_new_tokens,
        }

    def text(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def columns(self, done: Any) -> dict[str, list[Any]]:
        """A finished request's output row (``vllm_engine.Finished``), as one-row columns."""
        answer = Answer(self.text(done.token_ids), done.finish_reason, len(done.token_ids))
        row = Answers(done.prompt_tokens, [answer]).columns()
        return {k: [v] for k, v in row.items()}


def load_tokenizer(cfg: Config, path: str) -> Any:
    tokenizer = model_loading.load_tokenizer(cfg.model, path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_chat_template(cfg, path, tokenizer)
    return tokenizer


def check_chat_template(cfg: Config, path: str, owner: Any) -> None:
    """Chat prompts need the model's template: refused before any work without one."""
    if (cfg.data.messages_field or cfg.task.chat_template) and not getattr(
        owner, "chat_template", None
    ):
        via = (
            f"data.messages_field={cfg.data.messages_field}"
            if cfg.data.messages_field
            else "task.chat_template=true"
        )
        raise model_loading.ModelLoadError(
            f"model.path={path}: {via} needs the model's chat template, and its tokenizer has "
            "none. HINT: use a model that ships one (an instruct or chat model), or give plain "
            "text prompts with task.chat_template=false."
        )


def build_prompts(cfg: Config, path: str) -> EnginePrompts:
    tokenizer = load_tokenizer(cfg, path)
    limit = model_loading.max_length(cfg.model, tokenizer)
    return EnginePrompts(tokenizer, limit, cfg.task, cfg.seed, bool(cfg.data.messages_field))


def build(cfg: Config, path: str, device: torch.device) -> GenerateTask:
    tokenizer = load_tokenizer(cfg, path)
    model = model_loading.load_model(AutoModelForCausalLM, cfg.model, path, device)
    limit = model_loading.max_length(cfg.model, tokenizer)
    messages = bool(cfg.data.messages_field)
    return GenerateTask(tokenizer, model, limit, cfg.task, cfg.seed, messages)
