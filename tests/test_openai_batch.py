"""OpenAI Batch API files in and out (task.engine=hf): custom_id as the id, body fields as each
request's settings, the output in the Batch output shape with bodies openai's own types accept,
bad requests in the error file beside it and in errors.jsonl, the same answers as the same
requests given as chat messages with per-row params."""

import pytest
import tiny_models
from helpers import TEXTS, read_jsonl, run_in_process, write_records

openai_types = pytest.importorskip("openai.types")


@pytest.fixture(scope="session")
def chat_llama(models_dir):
    return tiny_models.save_chat_llama(models_dir / "chat-llama")


def request(k: int, url: str, body: dict) -> dict:
    return {"custom_id": f"req-{k}", "method": "POST", "url": url, "body": body}


def chat_requests() -> list[dict]:
    bodies = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": TEXTS[k]}],
         "max_tokens": 4 + k}
        for k in range(6)
    ]  # fmt: skip
    bodies[1].update(temperature=0.7, seed=5)
    bodies[2].update(stop=["z"], logprobs=True, top_logprobs=2)
    bodies[3].update(
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
            },
        }
    )
    return [request(k, "/v1/chat/completions", b) for k, b in enumerate(bodies)]


def test_a_chat_batch_file_gives_batch_output_lines_openai_types_accept(tmp_path, chat_llama):
    from openai.types.chat import ChatCompletion

    requests = chat_requests()
    write_records(tmp_path / "batch.jsonl", requests)
    run_in_process(["task=generate", f"model.path={chat_llama}", "data.path=batch.jsonl",
                    "output.path=results.jsonl"], cwd=tmp_path)  # fmt: skip
    lines = read_jsonl(tmp_path / "results.jsonl")
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    for line, req in zip(lines, requests, strict=True):
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.usage.completion_tokens <= req["body"]["max_tokens"]
        assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens
        assert body.choices[0].finish_reason in ("stop", "length")
    assert lines[2]["response"]["body"]["choices"][0]["logprobs"]["content"]
    # the same as chat messages with per-row params, in ddpinfer's own output
    rows = [{"uid": r["custom_id"], "chat": r["body"]["messages"],
             "p": {k: v for k, v in r["body"].items() if k not in ("messages", "model")}}
            for r in requests]  # fmt: skip
    write_records(tmp_path / "rows.jsonl", rows)
    run_in_process(["task=generate", f"model.path={chat_llama}", "data.path=rows.jsonl",
                    "data.id_field=uid", "data.messages_field=chat", "data.params_field=p",
                    "output.path=rows-out.jsonl"], cwd=tmp_path)  # fmt: skip
    for line, row in zip(lines, read_jsonl(tmp_path / "rows-out.jsonl"), strict=True):
        choice = line["response"]["body"]["choices"][0]
        assert choice["message"]["content"] == row["generated_text"]
        assert choice["finish_reason"] == row["finish_reason"]


def test_completions_file_and_bad_requests_go_to_the_error_file(tmp_path, chat_llama):
    from openai.types import Completion

    requests = [request(k, "/v1/completions", {"prompt": TEXTS[k], "max_tokens": 5,
                                                "logprobs": 2}) for k in range(4)]  # fmt: skip
    requests[1]["body"]["frequency_penalty"] = 0.5  # a field ddpinfer does not know
    requests[2]["url"] = "/v1/chat/completions"  # a second endpoint in the file
    write_records(tmp_path / "batch.jsonl", requests)
    args = ["task=generate", f"model.path={chat_llama}", "data.path=batch.jsonl"]
    from ddpinfer.errors import InputError

    with pytest.raises(InputError, match=r"batch\.jsonl:2: field 'body': unknown body field "
                                         "'frequency_penalty'"):  # fmt: skip
        run_in_process([*args, "output.path=a.jsonl"], cwd=tmp_path)
    run_in_process([*args, "output.path=out.jsonl", "data.on_error=skip", "data.max_bad=4",
                    "run.name=skip"], cwd=tmp_path)  # fmt: skip
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in lines] == ["req-0", "req-3"]
    for line in lines:
        body = Completion.model_validate(line["response"]["body"])
        assert body.choices[0].logprobs.tokens and body.usage.prompt_tokens > 0
    failed = read_jsonl(tmp_path / "out.errors.jsonl")
    assert [f["custom_id"] for f in failed] == ["req-1", "req-2"]
    assert all(f["response"] is None and f["error"]["message"] for f in failed)
    assert "one endpoint per file" in failed[1]["error"]["message"]
    errors = read_jsonl(tmp_path / "runs" / "skip" / "errors.jsonl")
    assert [e["id"] for e in errors] == ["req-1", "req-2"]


def test_custom_ids_must_be_unique_and_the_task_must_answer_the_endpoint(tmp_path, chat_llama):
    from ddpinfer.errors import InputError, UserError

    requests = chat_requests()[:3]
    requests[2]["custom_id"] = "req-0"
    write_records(tmp_path / "batch.jsonl", requests)
    with pytest.raises(InputError, match="duplicate id 'req-0'"):
        run_in_process(["task=generate", f"model.path={chat_llama}", "data.path=batch.jsonl",
                        "output.path=o.jsonl"], cwd=tmp_path)  # fmt: skip
    with pytest.raises(UserError, match="task=classify does not answer.*HINT: task=generate"):
        run_in_process(["task=classify", f"model.path={chat_llama}", "data.path=batch.jsonl",
                        "output.path=o.jsonl"], cwd=tmp_path)  # fmt: skip


@pytest.mark.parametrize("packing", ["true", "false"])
def test_an_embeddings_file_gives_embedding_responses(tmp_path, bert_embedder, packing):
    from openai.types import CreateEmbeddingResponse
    from transformers import AutoTokenizer

    requests = [request(k, "/v1/embeddings", {"input": TEXTS[k], "model": "x"}) for k in range(3)]
    write_records(tmp_path / "batch.jsonl", requests)
    run_in_process(["task=embed", f"model.path={bert_embedder}", "data.path=batch.jsonl",
                    "output.path=out.jsonl", f"batch.packing={packing}"], cwd=tmp_path)  # fmt: skip
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    tokenizer = AutoTokenizer.from_pretrained(bert_embedder)
    for k, line in enumerate(lines):
        body = CreateEmbeddingResponse.model_validate(line["response"]["body"])
        assert len(body.data[0].embedding) == 32
        tokens = len(tokenizer(TEXTS[k])["input_ids"])  # special tokens included, as vLLM counts
        assert body.usage.prompt_tokens == body.usage.total_tokens == tokens


def test_an_interrupted_batch_resumes_to_one_answer_per_request(tmp_path, chat_llama):
    requests = chat_requests() * 2
    for k, r in enumerate(requests):
        requests[k] = {**r, "custom_id": f"req-{k}"}
    write_records(tmp_path / "batch.jsonl", requests)
    args = ["task=generate", f"model.path={chat_llama}", "data.path=batch.jsonl",
            "data.unit_size=2", "batch_size=2", "output.path=out.jsonl",
            "run.name=job"]  # fmt: skip
    with pytest.raises(RuntimeError):
        run_in_process([*args, "fault.rank=0", "fault.at_unit=3"], cwd=tmp_path)
    assert not (tmp_path / "out.jsonl").exists()
    run_in_process(args, cwd=tmp_path)
    stats = read_jsonl(tmp_path / "runs" / "job" / "stats" / "rank0.json")[0]
    assert stats["rows"] == len(requests) - 6  # the three units done before the fault are kept
    run_in_process([a.replace("job", "straight") for a in args[:-1]] + ["output.path=s.jsonl",
                                                                        "run.name=straight"],
                   cwd=tmp_path)  # fmt: skip

    def answers(name):
        return [
            (x["custom_id"], x["response"]["body"]["choices"]) for x in read_jsonl(tmp_path / name)
        ]

    assert answers("out.jsonl") == answers("s.jsonl")
    assert [c for c, _ in answers("out.jsonl")] == [r["custom_id"] for r in requests]
