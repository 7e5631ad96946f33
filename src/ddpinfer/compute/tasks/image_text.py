"""Generation from image(s) and a prompt: AutoProcessor + AutoModelForImageTextToText, left
padding. Record: {"generated_text"} (the new text only).

Decoding (greedy, or per-row seeded sampling) is ``generate``'s. What differs is the input: on
the background thread each row's images are decoded (Pillow, RGB) and the row is run through the
processor once, alone, which both counts its tokens exactly (prompt + image tokens) and finds an
image or prompt the processor rejects before it can fail a batch. ``collate`` runs the processor
again over the batch, padded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForImageTextToText

from ddpinfer.compute import model_loading
from ddpinfer.compute.tasks.base import Columns
from ddpinfer.compute.tasks.generate import EnginePrompts, GenerateTask, check_chat_template
from ddpinfer.compute.tasks.prompts import render
from ddpinfer.compute.tasks.settings import Settings
from ddpinfer.config import Config, ImageTextTaskConfig
from ddpinfer.inputs import Row, chat, images


@dataclass
class ImageTextItem:
    prompt: str
    images: list[Any]
    tokens: int
    """Prompt tokens with the image tokens the processor expands the images into."""
    settings: Settings | None = None


class ImageTextTask(GenerateTask):
    window_rows = 512  # decoded images and pixel tensors of a whole window are held in memory

    def __init__(
        self, processor: Any, model, cfg: ImageTextTaskConfig, seed: int, image_field: str,
        messages: bool = False, params_field: str | None = None,
    ) -> None:  # fmt: skip
        # No truncation: cutting a prompt could cut image tokens the model then cannot match.
        super().__init__(processor.tokenizer, model, None, cfg, seed, messages, params_field)
        self.processor = processor
        self.image_field = image_field
        self.messages = messages
        # prepare and collate run on the background thread, but a batch split after an error
        # is collated on the compute thread: one processor call at a time.
        self._processor_lock = threading.Lock()

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        items: list[Any] = []
        for row in rows:
            try:
                items.append(self._prepare_row(row))
            except (images.ImageError, ValueError) as e:
                items.append(e)
            except Exception as e:
                items.append(RuntimeError(f"processor failed: {type(e).__name__}: {e}"))
        return items

    def _prepare_row(self, row: Row) -> ImageTextItem:
        prompt, decoded = row_prompt(self.processor, self.cfg, row, self.image_field, self.messages)
        settings = self.prompt_ids.settings(row)
        if settings.n > 1:
            raise ValueError(
                "n > 1 with image_text runs on task.engine=vllm only (here each answer would "
                "need its own copy of the images). HINT: task.engine=vllm, or n=1."
            )
        with self._processor_lock:
            alone = self.processor(images=decoded, text=[prompt], return_tensors="pt")
        return ImageTextItem(prompt, decoded, int(alone["input_ids"].shape[1]), settings)

    def cost(self, item: ImageTextItem) -> int:
        """Prompt and image tokens, and every token that may be generated after them."""
        return item.tokens + item.settings.max_tokens

    def collate(self, items: Sequence[ImageTextItem]) -> dict[str, torch.Tensor]:
        with self._processor_lock:
            batch = self.processor(
                images=[image for item in items for image in item.images],
                text=[item.prompt for item in items],
                padding=True,
                return_tensors="pt",
            )
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return {**tensors, "settings": [item.settings for item in items]}

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, Any], rows: Sequence[int]) -> Columns:
        dtype = self.model.dtype  # pixel values arrive as float32
        batch = {
            k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in batch.items()
        }
        return super().__call__(batch, rows)


def row_prompt(
    processor: Any, cfg: ImageTextTaskConfig, row: Row, image_field: str, messages: bool
) -> tuple[str, list[Any]]:
    """A row's prompt text and its decoded images: its chat messages (``data.messages_field``)
    through the processor's chat template, else its text and images as one user turn (with
    ``task.chat_template=false``: the text as it is)."""
    if messages:
        conversation, decoded = chat.conversation(chat.parse(row.text))
        return render(processor, conversation, cfg), decoded
    decoded = images.load((row.fields or {})[image_field])
    if not cfg.chat_template:
        return row.text, decoded
    content = [{"type": "image"}] * len(decoded) + [{"type": "text", "text": row.text}]
    return render(processor, [{"role": "user", "content": content}], cfg), decoded


class ImageTextEnginePrompts(EnginePrompts):
    """task=image_text through an engine: the chat-templated text and the decoded images of
    each input (missing images were found by the preflight; one that does not decode fails its
    input, as with transformers); decoding settings and text as for task=generate."""

    images_per_prompt = 4
    """The engine's limit of images per prompt (more: +task.vllm.extra.limit_mm_per_prompt=...)."""

    def __init__(
        self, processor: Any, cfg: ImageTextTaskConfig, seed: int, image_field: str,
        messages: bool = False, params_field: str | None = None,
    ):  # fmt: skip
        super().__init__(processor.tokenizer, None, cfg, seed, messages, params_field)
        self.processor = processor
        self.image_field = image_field
        self.messages = messages

    def prepare(self, rows: Sequence[Row]) -> list[Any]:
        return [self._prepare_row(row) for row in rows]

    def _prepare_row(self, row: Row) -> Any:
        try:
            self.prompt_ids.settings(row)  # a row whose n does not fit fails here
            text, decoded = row_prompt(
                self.processor, self.cfg, row, self.image_field, self.messages
            )
        except (images.ImageError, ValueError) as e:
            return e
        except Exception as e:
            return RuntimeError(f"the chat template failed: {type(e).__name__}: {e}")
        return {
            "prompt": text,
            "multi_modal_data": {"image": decoded[0] if len(decoded) == 1 else decoded},
        }

    def prompt_tokens(self, prompt: Any) -> int:
        return 0  # known to the engine only, with its image tokens


def load_processor(cfg: Config, path: str) -> Any:
    processor = model_loading.load_processor(cfg.model, path)
    if cfg.data.messages_field:
        check_chat_template(cfg, path, processor)
    elif cfg.task.chat_template and not getattr(processor, "chat_template", None):
        raise model_loading.ModelLoadError(
            f"model.path={path}: the processor has no chat template. HINT: set "
            "task.chat_template=false and write the model's image placeholders into the text."
        )
    return processor


def build_prompts(cfg: Config, path: str) -> ImageTextEnginePrompts:
    return ImageTextEnginePrompts(
        load_processor(cfg, path), cfg.task, cfg.seed, cfg.data.image_field,
        bool(cfg.data.messages_field), cfg.data.params_field,
    )  # fmt: skip


def build(cfg: Config, path: str, device: torch.device) -> ImageTextTask:
    processor = load_processor(cfg, path)
    model = model_loading.load_model(AutoModelForImageTextToText, cfg.model, path, device)
    return ImageTextTask(
        processor, model, cfg.task, cfg.seed, cfg.data.image_field,
        bool(cfg.data.messages_field), cfg.data.params_field,
    )  # fmt: skip
