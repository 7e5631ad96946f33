"""What a generate row says about its answer, with task.engine=hf: finish_reason, token usage,
chat messages through the model's template; compared with transformers' own ``generate`` and
``apply_chat_template`` on the same tiny model."""

import json

import pytest
import tiny_models
from helpers import TEXTS, read_jsonl, run_in_process, write_jsonl, write_records


@pytest.fixture(scope="session")
def chat_llama(models_dir):
    return tiny_models.save_chat_llama(models_dir / "chat-llama")


def reference(path, prompts_ids: list[list[int]], max_new_tokens: int) -> list[dict]:
    """Each prompt alone through transformers' generate: the answer up to its end-of-sequence
    token, and why it ended."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    eos = tokenizer.eos_token_id
    rows = []
    for ids in prompts_ids:
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=eos,
        )  # fmt: skip
        new = out[0, len(ids) :].tolist()
        stop = eos in new
        new = new[: new.index(eos) + 1] if stop else new
        rows.append({
            "generated_text": tokenizer.decode(new, skip_special_tokens=True),
            "finish_reason": "stop" if stop else "length",
            "prompt_tokens": len(ids),
            "completion_tokens": len(new),
        })  # fmt: skip
    return rows


def job(model, *extra) -> list[str]:
    return ["task=generate", f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            "task.max_new_tokens=12", "batch_size=4", "output.path=out.jsonl", *extra]  # fmt: skip


def test_each_answer_says_why_it_ended_and_what_it_cost(tmp_path, chat_llama):
    from transformers import AutoTokenizer

    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    run_in_process(job(chat_llama), cwd=tmp_path)
    rows = read_jsonl(tmp_path / "out.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    expected = reference(chat_llama, [tokenizer(t)["input_ids"] for t in TEXTS], 12)
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    assert {r["finish_reason"] for r in rows} == {"stop", "length"}  # both kinds seen
