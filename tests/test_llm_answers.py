"""What a generate row says about its answer, with task.engine=hf: finish_reason, token usage,
chat messages through the model's template; compared with transformers' own ``generate`` and
``apply_chat_template`` on the same tiny model."""

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


CHATS = [
    [{"role": "user", "content": "hello world"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the lazy dog"}],
    [
        {"role": "user", "content": [{"type": "text", "text": "numbers like "},
                                     {"type": "text", "text": "12 and 345"}]},
        {"role": "assistant", "content": "short"},
        {"role": "user", "content": "one more line"},
    ],
]  # fmt: skip


def chat_ids(path, chats, **kwargs) -> list[list[int]]:
    """transformers' own rendering: the template with the generation prompt, tokenized."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = []
    for messages in chats:
        flat = [
            {**m, "content": "".join(p["text"] for p in m["content"])}
            if isinstance(m["content"], list) else m
            for m in messages
        ]  # fmt: skip
        if kwargs.get("system") and flat[0]["role"] != "system":
            flat = [{"role": "system", "content": kwargs["system"]}, *flat]
        extra = {k: v for k, v in kwargs.items() if k != "system"}
        out = tokenizer.apply_chat_template(flat, add_generation_prompt=True, **extra)
        ids.append(list(out["input_ids"]))
    return ids


def test_chat_messages_go_through_the_template_with_a_system_turn_and_its_kwargs(
    tmp_path, chat_llama
):
    write_records(tmp_path / "in.jsonl", [{"uid": f"c{i}", "chat": c} for i, c in enumerate(CHATS)])
    run_in_process(
        job(chat_llama, "data.messages_field=chat", "task.system_prompt=you are terse",
            "+task.chat_template_kwargs.enable_thinking=false"),
        cwd=tmp_path,
    )  # fmt: skip
    rows = read_jsonl(tmp_path / "out.jsonl")
    ids = chat_ids(chat_llama, CHATS, system="you are terse", enable_thinking=False)
    expected = reference(chat_llama, ids, 12)
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    # the kwargs reached the template: without them the prompts differ
    assert ids != chat_ids(chat_llama, CHATS, system="you are terse")


def test_plain_prompts_are_wrapped_with_task_chat_template(tmp_path, chat_llama):
    write_jsonl(tmp_path / "in.jsonl", TEXTS[:4])
    run_in_process(
        job(
            chat_llama, "task.chat_template=true", "task.chat_template_kwargs.enable_thinking=false"
        ),
        cwd=tmp_path,
    )
    rows = read_jsonl(tmp_path / "out.jsonl")
    chats = [[{"role": "user", "content": t}] for t in TEXTS[:4]]
    expected = reference(chat_llama, chat_ids(chat_llama, chats, enable_thinking=False), 12)
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected


def test_malformed_messages_are_bad_records_naming_file_and_line(tmp_path, chat_llama):
    from ddpinfer.errors import InputError

    bad = [
        {"uid": "ok", "chat": CHATS[0]},
        {"uid": "no-role", "chat": [{"content": "hi"}]},
        {"uid": "not-a-list", "chat": "hi"},
        {"uid": "bad-part", "chat": [{"role": "user", "content": [{"type": "video"}]}]},
        {"uid": "remote", "chat": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
    ]  # fmt: skip
    write_records(tmp_path / "in.jsonl", bad)
    with pytest.raises(InputError, match=r"in\.jsonl:2: field 'chat': message 0 has role None"):
        run_in_process(job(chat_llama, "data.messages_field=chat"), cwd=tmp_path)
    run_in_process(job(chat_llama, "data.messages_field=chat", "data.on_error=skip",
                       "data.max_bad=10", "run.name=skip"), cwd=tmp_path)  # fmt: skip
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["ok"]
    errors = read_jsonl(tmp_path / "runs" / "skip" / "errors.jsonl")
    assert [e["id"] for e in errors] == ["no-role", "not-a-list", "bad-part", "remote"]
    assert "in.jsonl:4" in errors[2]["error"] and "content part" in errors[2]["error"]
    assert "no network" in errors[3]["error"]


def test_a_model_without_a_chat_template_is_refused_before_any_work(tmp_path, gpt2_generator):
    from ddpinfer.errors import UserError

    write_records(tmp_path / "in.jsonl", [{"uid": "a", "chat": CHATS[0]}])
    with pytest.raises(UserError, match="needs the model's chat template"):
        run_in_process(job(gpt2_generator, "data.messages_field=chat"), cwd=tmp_path)
    assert not (tmp_path / "out.jsonl").exists()


def test_image_text_messages_with_paths_and_data_urls_equal_the_image_field_form(
    tmp_path, tiny_llava
):
    import base64

    from helpers import write_image_inputs

    data, records = write_image_inputs(tmp_path)
    chats = []
    for record in records:
        paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
        urls = [
            p if k else "data:image/png;base64," + base64.b64encode(
                (tmp_path / p).read_bytes()).decode()
            for k, p in enumerate(paths)
        ]  # fmt: skip
        parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        content = [*parts, {"type": "text", "text": record["text"]}]
        chats.append({"uid": record["uid"], "chat": [{"role": "user", "content": content}]})
    write_records(tmp_path / "chat.jsonl", chats)
    common = ["task=image_text", f"model.path={tiny_llava}", "data.id_field=uid",
              "task.max_new_tokens=6", "batch_size=3"]  # fmt: skip
    run_in_process([*common, f"data.path={data}", "output.path=a.jsonl"], cwd=tmp_path)
    run_in_process(
        [*common, "data.path=chat.jsonl", "data.messages_field=chat", "output.path=b.jsonl"],
        cwd=tmp_path,
    )
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert a == b
    assert all(r["prompt_tokens"] > 0 and r["finish_reason"] in ("stop", "length") for r in a)


def test_the_chat_template_and_chat_settings_are_part_of_the_fingerprint(tmp_path, chat_llama):
    import shutil

    from transformers import AutoTokenizer

    from ddpinfer.config import GenerateTaskConfig
    from ddpinfer.plan.fingerprint import model_files, task_settings

    copy = shutil.copytree(chat_llama, tmp_path / "model")
    before = model_files(str(copy))
    tokenizer = AutoTokenizer.from_pretrained(copy)
    tokenizer.chat_template = tiny_models.CHAT_TEMPLATE.replace("<|assistant|>", "<|bot|>")
    tokenizer.save_pretrained(copy)
    assert model_files(str(copy)) != before
    plain = task_settings(GenerateTaskConfig())
    assert task_settings(GenerateTaskConfig(system_prompt="be brief")) != plain
    assert (
        task_settings(GenerateTaskConfig(chat_template_kwargs={"enable_thinking": False})) != plain
    )
