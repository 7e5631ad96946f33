"""Text generation: AutoModelForCausalLM with left padding. Record: {"generated_text"} (new text),
"finish_reason", "prompt_tokens" and "completion_tokens" (``answers``).

Greedy by default. With task.do_sample=true (or a row's temperature), each input samples from
its own random stream, seeded by ``seed`` and its row number (``settings``), so which rank or
batch an input lands in changes nothing: the same command gives the same text on 1 or 64 GPUs.
Each row may carry its own settings (``data.params_field``); ``hf_decoding`` runs them in one
batch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, StoppingCriteriaList

from ddpinfer.compute import model_loading
from ddpinfer.compute.tasks.answers import (
    Answer,
    Answers,
    answer_length,
    cut_at_stop,
    eos_ids,
    logprobs_content,
)
from ddpinfer.compute.tasks.base import Columns, Task, rows_to_columns
from ddpinfer.compute.tasks.hf_decoding import (
    GrammarCompiler,
    Grammars,
    PerRowSampling,
    StopStrings,
)
from ddpinfer.compute.tasks.prompts import PromptIds
from ddpinfer.compute.tasks.settings import Settings, vllm_sampling
from ddpinfer.config import Config, GenerateTaskConfig
from ddpinfer.inputs import Row


class GenerateTask(Task):
    padding_side = "left"

    def __init__(
        self, tokenizer, model, max_length, cfg: GenerateTaskConfig, seed: int, messages=False,
        params_field: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(tokenizer, model, max_length)
        self.cfg = cfg
        self.seed = seed
        self.prompt_ids = PromptIds(tokenizer, max_length, cfg, seed, messages, params_field)
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.grammar = GrammarCompiler(tokenizer, self.vocab)
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

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        return self.prompt_ids(rows)

    def cost(self, item: Any) -> int:
        """The prompt and every token that may be generated after it, for each of its answers."""
        return (len(item) + item.settings.max_tokens) * item.settings.n

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        return {**super().collate(items), "settings": [item.settings for item in items]}

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, Any], rows: Sequence[int]) -> Columns:
        settings: list[Settings] = batch["settings"]
        inputs = {k: v for k, v in batch.items() if k != "settings"}
        samples = [(i, k) for i, s in enumerate(settings) for k in range(s.n)]
        if len(samples) > len(settings):  # n answers: each prompt n times, each its own stream
            counts = torch.tensor([s.n for s in settings])
            inputs = {k: v.repeat_interleave(counts.to(v.device), dim=0) for k, v in inputs.items()}
        each = [settings[i] for i, _ in samples]
        width = inputs["input_ids"].shape[1]
        stops = StopStrings([s.stop for s in each], width, self.decoder)
        want_logprobs = any(s.logprobs is not None for s in each)
        out = self.model.generate(
            **inputs,
            generation_config=self.generation_config,
            max_new_tokens=max(s.max_tokens for s in each),
            logits_processor=self._processors(
                each, [settings[i].stream_seed(k) for i, k in samples]
            ),
            stopping_criteria=StoppingCriteriaList([stops] if any(s.stop for s in each) else []),
            return_dict_in_generate=want_logprobs,
            output_logits=want_logprobs,
        )
        sequences = out.sequences if want_logprobs else out
        logits = torch.stack(out.logits, dim=1).float() if want_logprobs else None
        new_tokens = sequences[:, width:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        answers = [Answers(0, self.prompt_ids.shape) for _ in settings]
        for j, (i, _) in enumerate(samples):
            answers[i].prompt_tokens = int(prompt_tokens[j])
            step_logits = logits[j] if logits is not None else None
            answers[i].answers.append(
                self._answer(new_tokens[j], each[j], stops.stopped.get(j), step_logits)
            )
        return rows_to_columns([a.columns() for a in answers])

    def _processors(self, each: list[Settings], seeds: list[int]) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if any(s.response_format for s in each):
            processors.append(Grammars([self.grammar(s.response_format) for s in each], self.vocab))
        if not all(s.greedy for s in each):
            processors.append(PerRowSampling(each, seeds, self.device))
        return processors

    def _answer(
        self, tokens: list[int], s: Settings, stopped_at: int | None, logits: Any
    ) -> Answer:
        length, ended = answer_length(tokens[: s.max_tokens], self.eos)
        if stopped_at is not None and stopped_at <= length:
            length, ended = stopped_at, True
        text, cut = cut_at_stop(self.decoder.decode(tokens[:length], skip_special_tokens=True),
                                s.stop)  # fmt: skip
        answer = Answer(text, "stop" if ended or cut else "length", length)
        if s.logprobs is not None:
            answer.logprobs = hf_logprobs(self.decoder, tokens[:length], logits, s.logprobs)
        return answer


def hf_logprobs(decoder: Any, tokens: list[int], logits: torch.Tensor, top: int) -> list[dict]:
    """The generated tokens' logprobs from ``generate``'s raw logits (the model's own
    distribution, before any sampling setting: as vLLM's raw_logprobs)."""
    steps = []
    for t, token in enumerate(tokens):
        logp = torch.log_softmax(logits[t], dim=-1)
        best = torch.topk(logp, top) if top else None
        step = {} if best is None else dict(zip(best.indices.tolist(), best.values.tolist()))
        step[token] = float(logp[token])
        steps.append(step)
    return logprobs_content(lambda i: decoder.decode([i]), tokens, steps, top)


class EnginePrompts:
    """task=generate through an engine (task.engine=vllm): each input's prompt as token ids,
    tokenized exactly as for transformers' ``generate``; its decoding settings with the same
    meaning (greedy; or sampled from the input's own seeded stream, with temperature, top-k and
    top-p); and the text of the tokens it generated, decoded the same way."""

    images_per_prompt: int | None = None

    def __init__(
        self, tokenizer: Any, max_length: int | None, cfg: GenerateTaskConfig, seed: int,
        messages: bool = False, params_field: str | None = None,
    ):  # fmt: skip
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cfg = cfg
        self.seed = seed
        self.prompt_ids = PromptIds(tokenizer, max_length, cfg, seed, messages, params_field)

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        """A prompt per row (or the exception that says why it has none)."""
        ids = self.prompt_ids(rows)
        return [i if isinstance(i, Exception) else {"prompt_token_ids": i} for i in ids]

    def prompt_tokens(self, prompt: Any) -> int:
        return len(prompt.get("prompt_token_ids", ()))

    def sampling(self, row: Row) -> dict[str, Any]:
        """The engine's settings for one input (vLLM's ``SamplingParams`` fields)."""
        return vllm_sampling(self.prompt_ids.settings(row))

    def text(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def columns(self, done: Any, row: Row) -> dict[str, list[Any]]:
        """A finished request's output row (``vllm_engine.Finished``), as one-row columns."""
        s = self.prompt_ids.settings(row)
        answers = Answers(done.prompt_tokens, self.prompt_ids.shape)
        for sample in done.samples:
            text, cut = cut_at_stop(self.text(sample.token_ids), s.stop)
            reason = "stop" if cut else sample.finish_reason
            answer = Answer(text, reason, len(sample.token_ids))
            if s.logprobs is not None:
                decode = lambda i: self.tokenizer.decode([i])  # noqa: E731
                answer.logprobs = logprobs_content(decode, sample.token_ids, sample.logprobs,
                                                   s.logprobs)  # fmt: skip
            answers.answers.append(answer)
        return {k: [v] for k, v in answers.columns().items()}


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
    messages = bool(cfg.data.messages_field)
    return EnginePrompts(tokenizer, limit, cfg.task, cfg.seed, messages, cfg.data.params_field)


def build(cfg: Config, path: str, device: torch.device) -> GenerateTask:
    tokenizer = load_tokenizer(cfg, path)
    model = model_loading.load_model(AutoModelForCausalLM, cfg.model, path, device)
    limit = model_loading.max_length(cfg.model, tokenizer)
    messages = bool(cfg.data.messages_field)
    return GenerateTask(
        tokenizer, model, limit, cfg.task, cfg.seed, messages, cfg.data.params_field
    )
