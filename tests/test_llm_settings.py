"""Generation settings, for the whole task and per row (data.params_field), with
task.engine=hf: stop strings, n answers, logprobs, structured output; each compared with what
transformers (or jsonschema) says it must be, on a tiny random model."""

import json

import pytest
import tiny_models
import torch
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, write_jsonl, write_records

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="session")
def chat_llama(models_dir):
    return tiny_models.save_chat_llama(models_dir / "chat-llama")


@pytest.fixture(scope="session")
def hf(chat_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(chat_llama), AutoTokenizer.from_pretrained(
        chat_llama
    )


def job(model, *extra) -> list[str]:
    return ["task=generate", f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            "task.max_new_tokens=16", "batch_size=4", "output.path=out.jsonl", *extra]  # fmt: skip


def greedy_alone(hf, text, max_new_tokens, **kwargs) -> list[int]:
    model, tokenizer = hf
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id, **kwargs)  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def test_stop_strings_cut_the_text_and_end_with_stop_as_transformers_stops(
    tmp_path, chat_llama, hf
):
    model, tokenizer = hf
    free = [tokenizer.decode(greedy_alone(hf, t, 16), skip_special_tokens=True) for t in TEXTS]
    import re

    # an ASCII letter from the middle of an answer (random weights write partial characters)
    found = [(k, m.group()) for k, t in enumerate(free) for m in re.finditer("[a-z]", t[1:])]
    long, stop = [found[0][0]], found[0][1]
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    run_in_process(job(chat_llama, f"task.stop=[{json.dumps(stop)}]"), cwd=tmp_path)
    rows = read_jsonl(tmp_path / "out.jsonl")
    for text, row in zip(TEXTS, rows, strict=True):
        new = greedy_alone(hf, text, 16, stop_strings=[stop], tokenizer=tokenizer)
        eos = tokenizer.eos_token_id
        new = new[: new.index(eos) + 1] if eos in new else new
        decoded = tokenizer.decode(new, skip_special_tokens=True)
        assert row["generated_text"] == decoded.split(stop)[0]
        assert row["completion_tokens"] == len(new)
        ended = stop in decoded or eos in new
        assert row["finish_reason"] == ("stop" if ended else "length")
    assert stop not in rows[long[0]]["generated_text"]
    assert rows[long[0]]["finish_reason"] == "stop"


def test_logprobs_equal_a_teacher_forced_forward_pass(tmp_path, chat_llama, hf):
    model, tokenizer = hf
    write_jsonl(tmp_path / "in.jsonl", TEXTS[:5])
    run_in_process(job(chat_llama, "task.logprobs=3", "task.max_new_tokens=6"), cwd=tmp_path)
    for text, row in zip(TEXTS[:5], read_jsonl(tmp_path / "out.jsonl"), strict=True):
        prompt = tokenizer(text)["input_ids"]
        new = greedy_alone(hf, text, 6)[: row["completion_tokens"]]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + new])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
        content = row["logprobs"]
        assert len(content) == len(new)
        for t, (token, entry) in enumerate(zip(new, content, strict=True)):
            assert entry["token"] == tokenizer.decode([token])
            assert entry["bytes"] == list(entry["token"].encode())
            assert entry["logprob"] == pytest.approx(float(logp[t, token]), abs=1e-4)
            best = torch.topk(logp[t], 3)
            assert [e["logprob"] for e in entry["top_logprobs"]] == pytest.approx(
                best.values.tolist(), abs=1e-4
            )
            assert [e["token"] for e in entry["top_logprobs"]] == [
                tokenizer.decode([i]) for i in best.indices.tolist()
            ]


@pytest.mark.slow  # a two-rank run
def test_n_answers_per_prompt_are_seeded_per_row_and_answer_on_any_number_of_ranks(
    tmp_path, chat_llama
):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    args = job(chat_llama, "task.n=3", "task.do_sample=true", "task.max_new_tokens=8")
    run_in_process([*args, "batch_size=2"], cwd=tmp_path)
    one = read_jsonl(tmp_path / "out.jsonl")
    check(launch([*args, "output.path=two.jsonl", "run.name=two", "data.unit_size=3"], nproc=2,
                 cwd=tmp_path))  # fmt: skip
    assert read_jsonl(tmp_path / "two.jsonl") == one
    assert all(len(r["generated_text"]) == 3 and len(r["finish_reason"]) == 3 for r in one)
    assert any(len(set(r["generated_text"])) > 1 for r in one)  # the streams differ


def test_response_formats_give_answers_that_parse_and_validate(tmp_path, chat_llama):
    jsonschema = pytest.importorskip("jsonschema")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    write_jsonl(tmp_path / "in.jsonl", TEXTS[:6])
    run_in_process(job(chat_llama, f"task.response_format=@{tmp_path / 'schema.json'}",
                       "task.max_new_tokens=48"), cwd=tmp_path)  # fmt: skip
    rows = read_jsonl(tmp_path / "out.jsonl")
    finished = [r for r in rows if r["finish_reason"] == "stop"]
    assert finished  # random weights: some answers may run out of tokens
    for row in finished:
        jsonschema.validate(json.loads(row["generated_text"]), SCHEMA)
    # per row: a regex and a list of choices, beside a row without any
    records = [
        {"uid": "re", "text": TEXTS[0], "p": {"response_format": "[a-z]{2,5}-[0-9]{1,3}"}},
        {"uid": "choice", "text": TEXTS[1], "p": {"response_format": ["yes", "no", "maybe"]}},
        {"uid": "free", "text": TEXTS[2], "p": {}},
    ]
    write_records(tmp_path / "in.jsonl", records)
    run_in_process(job(chat_llama, "data.params_field=p", "output.path=rows.jsonl"), cwd=tmp_path)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "rows.jsonl")}
    import re

    assert re.fullmatch("[a-z]{2,5}-[0-9]{1,3}", rows["re"]["generated_text"])
    assert rows["choice"]["generated_text"] in ("yes", "no", "maybe")
    assert rows["choice"]["finish_reason"] == "stop"


def test_row_params_override_the_task_settings_as_the_same_task_settings_would(
    tmp_path, chat_llama
):
    settings = [
        ({"max_tokens": 3}, ["task.max_new_tokens=3"]),
        ({"temperature": 0.8, "top_k": 20, "seed": 7}, ["task.do_sample=true",
            "task.temperature=0.8", "task.top_k=20", "seed=7"]),
        ({"stop": "e", "logprobs": True, "top_logprobs": 2}, ["task.stop=[e]", "task.logprobs=2"]),
    ]  # fmt: skip
    records = [{"uid": f"r{k}", "text": TEXTS[4], "p": p} for k, (p, _) in enumerate(settings)]
    write_records(tmp_path / "in.jsonl", records)
    run_in_process(job(chat_llama, "data.params_field=p"), cwd=tmp_path)
    mixed = read_jsonl(tmp_path / "out.jsonl")
    for k, (params, task_args) in enumerate(settings):
        write_records(tmp_path / "one.jsonl", [{"uid": f"r{k}", "text": TEXTS[4]}])
        name = f"alone{k}.jsonl"
        extra = [*task_args, "data.path=one.jsonl", f"output.path={name}", f"run.name=a{k}"]
        if "seed" in params:  # a row's own seed replaces (seed, row): the same at row 0, seed 7
            extra += ["data.id_field=uid"]
        run_in_process(job(chat_llama, *extra), cwd=tmp_path)
        alone = read_jsonl(tmp_path / name)[0]
        if "seed" in params:
            continue  # checked below: the stream is the row's own
        got = {k: v for k, v in mixed[k].items() if v is not None}
        logprobs = got.pop("logprobs", None), alone.pop("logprobs", None)
        assert got == alone, params
        if logprobs[0] is not None:  # in a batch of 4 with padding: equal within float error
            values = [[e["logprob"] for e in x] for x in logprobs]
            assert values[0] == pytest.approx(values[1], abs=1e-4)
    assert mixed[1]["generated_text"] != mixed[0]["generated_text"]


def test_an_unknown_or_bad_row_setting_is_a_bad_record_naming_it(tmp_path, chat_llama):
    from ddpinfer.errors import InputError

    records = [
        {"uid": "ok", "text": "hello", "p": {"max_tokens": 2}},
        {"uid": "typo", "text": "hello", "p": {"max_token": 2}},
        {"uid": "bad", "text": "hello", "p": {"temperature": "hot"}},
        {"uid": "n", "text": "hello", "p": {"n": 2}},
    ]
    write_records(tmp_path / "in.jsonl", records)
    with pytest.raises(InputError, match=r"in\.jsonl:2: field 'p': unknown setting 'max_token'"):
        run_in_process(job(chat_llama, "data.params_field=p"), cwd=tmp_path)
    run_in_process(job(chat_llama, "data.params_field=p", "data.on_error=skip", "data.max_bad=5",
                       "run.name=skip"), cwd=tmp_path)  # fmt: skip
    errors = read_jsonl(tmp_path / "runs" / "skip" / "errors.jsonl")
    assert [e["id"] for e in errors] == ["typo", "bad", "n"]
    assert "temperature='hot'" in errors[1]["error"]
    assert "task.n=1" in errors[2]["error"]


def test_row_params_are_part_of_the_rows_digests(tmp_path):
    from ddpinfer.config.request_settings import check_params
    from ddpinfer.inputs import open_spec
    from ddpinfer.inputs.scan import scan

    def digest(params):
        write_records(tmp_path / "in.jsonl", [{"text": "a", "p": params}])
        spec = open_spec(str(tmp_path / "in.jsonl"), "auto", "text", None,
                         fields=(("p", check_params),), digested=("p",))  # fmt: skip
        return scan(spec).digest

    assert digest({"max_tokens": 2}) != digest({"max_tokens": 3})
