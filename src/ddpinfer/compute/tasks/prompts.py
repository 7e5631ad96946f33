"""Each generate input's prompt as token ids, made once on the background thread and given as
they are to either engine: its text tokenized (truncated to model.max_length), or its chat
(``data.messages_field``, or the text as one user turn with ``task.chat_template=true``)
rendered once with the tokenizer's chat template and the generation prompt, and tokenized once
without adding special tokens (the template writes them itself)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ddpinfer.compute.tasks.answers import Shape
from ddpinfer.compute.tasks.base import prepare_each, tokenize
from ddpinfer.compute.tasks.settings import Settings, settings_for
from ddpinfer.config import GenerateTaskConfig
from ddpinfer.inputs import Row, chat


class Prompt(list):
    """A prompt's token ids, with the settings its answers are generated with."""

    settings: Settings


class PromptIds:
    def __init__(
        self, tokenizer: Any, max_length: int | None, cfg: GenerateTaskConfig, seed: int,
        messages: bool = False, params_field: str | None = None,
    ) -> None:  # fmt: skip
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cfg = cfg
        self.seed = seed
        self.messages = messages
        self.chat = messages or cfg.chat_template
        self.params_field = params_field
        self.shape = Shape(
            listed=cfg.n > 1, logprobs=cfg.logprobs is not None or bool(params_field)
        )

    def settings(self, row: Row) -> Settings:
        """The row's settings; ``ValueError`` if its n does not fit the output's shape."""
        params = (row.fields or {}).get(self.params_field) if self.params_field else None
        settings = settings_for(self.cfg, self.seed, row.index, params)
        if settings.n > 1 and not self.shape.listed:
            raise ValueError(
                f"n={settings.n}, but task.n=1 writes one answer per row. HINT: set task.n "
                "to the usual n (answers then are lists; a row's n overrides it)."
            )
        return settings

    def __call__(self, rows: Sequence[Row]) -> list[Any]:
        """A ``Prompt`` per row, or the exception that says why the row has none."""
        if not self.chat:
            texts = [r.text for r in rows]
            ids = prepare_each(lambda t: tokenize(self.tokenizer, t, self.max_length), texts)
        else:
            ids = [self._chat_ids(row) for row in rows]
        return [i if isinstance(i, Exception) else self._prompt(i, r) for i, r in zip(ids, rows)]

    def _prompt(self, ids: list[int], row: Row) -> Prompt | Exception:
        prompt = Prompt(ids)
        try:
            prompt.settings = self.settings(row)
        except ValueError as e:
            return e
        return prompt

    def _chat_ids(self, row: Row) -> Any:
        try:
            messages = text_only(chat.parse(row.text)) if self.messages else user_turn(row.text)
            text = render(self.tokenizer, messages, self.cfg)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        except ValueError as e:
            return ValueError(str(e))
        except Exception as e:
            return RuntimeError(f"the chat template failed: {type(e).__name__}: {e}")
        if self.max_length is not None and len(ids) > self.max_length:
            return ValueError(
                f"the chat prompt has {len(ids)} tokens, more than model.max_length="
                f"{self.max_length} (a chat is not cut: it would lose its generation prompt)"
            )
        return ids


def user_turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def render(template_owner: Any, messages: list[dict[str, Any]], cfg: GenerateTaskConfig) -> str:
    """The chat as the model's template writes it, with the generation prompt."""
    return template_owner.apply_chat_template(
        chat.with_system(messages, cfg.system_prompt),
        add_generation_prompt=True,
        tokenize=False,
        **dict(cfg.chat_template_kwargs or {}),
    )


def text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """task=generate: a content given as text parts becomes their text; an image part is
    refused (the task has no images: task=image_text has)."""
    out = []
    for k, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, list):
            if any(p["type"] != "text" for p in content):
                raise ValueError(
                    f"message {k} holds an image, and task=generate reads text only. HINT: "
                    "task=image_text with a model that reads images."
                )
            content = "".join(p["text"] for p in content)
        out.append({**message, "content": content})
    return out
