"""Helpers shared by tests: sample inputs, JSONL files, and running the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launch" / "infer.py"

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "a much longer input that goes on and on so that the batches have different lengths to pad",
    "short",
    "distributed inference runs every input exactly once, in input order",
    "numbers like 12 and 345",
    "x",
    "tests with random weights still check the plumbing end to end",
    "what is the capital of france?",
    "one more line",
    "and another one with some punctuation!?",
]


def write_jsonl(path: Path, texts: list[str], id_prefix: str = "doc") -> Path:
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"uid": f"{id_prefix}-{i}", "text": text}) + "\n")
    return path


IMAGE_PROMPTS = [
    "describe the image",
    "what colour is it? the quick brown fox jumps over the lazy dog",
    "hello",
    "the lazy dog",
    "compare the two pictures",
    "numbers like 12",
    "a small model",
]


def write_image(path: Path, seed: int, size: tuple[int, int]) -> Path:
    """A random RGB picture of ``size`` (height, width), saved in the format of its suffix."""
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_image_inputs(folder: Path) -> tuple[Path, list[dict]]:
    """``folder/in.jsonl`` with a prompt and image(s) per record: relative, absolute and listed
    paths to images of different sizes under ``folder/img``."""
    (folder / "img").mkdir(exist_ok=True)
    records = []
    for i, prompt in enumerate(IMAGE_PROMPTS):
        first = write_image(folder / "img" / f"{i}.png", i, (9 + i, 12 + 2 * i))
        image: str | list[str] = f"img/{i}.png" if i % 3 else str(first)
        if i % 2:
            second = write_image(folder / "img" / f"{i}b.png", 100 + i, (16, 10))
            image = [image, f"img/{second.name}"]
        records.append({"uid": f"q{i}", "text": prompt, "image": image})
    return write_records(folder / "in.jsonl", records), records


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GLOO_SOCKET_IFNAME="lo")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def torchrun_cmd(args: list[str], nproc: int, *flags: str) -> list[str]:
    """`torchrun --nproc_per_node=N <flags> launch/infer.py <args>`: one standalone node, unless
    ``flags`` name a rendezvous (``--rdzv-*``, for several "nodes" on this host)."""
    standalone = [] if any(f.startswith("--rdzv") for f in flags) else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *standalone,
        f"--nproc_per_node={nproc}",
        *flags,
        str(LAUNCHER),
        *args,
    ]


def two_node_rendezvous(port: int, rdzv_id: str) -> list[str]:
    """torchrun flags for one of two "nodes" on this host meeting at a c10d rendezvous."""
    return [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id={rdzv_id}",
    ]


def launch(
    args: list[str],
    *,
    nproc: int | None = None,
    cwd: Path,
    timeout: float = 900,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real entry point: `python launch/infer.py` or `torchrun --nproc_per_node=N ...`,
    with ``env`` added to the environment."""
    if nproc is None:
        cmd = [sys.executable, str(LAUNCHER), *args]
    else:
        cmd = torchrun_cmd(args, nproc, *(extra or []))
    return subprocess.run(
        cmd, cwd=cwd, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start a process in the background, output to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd, cwd=cwd, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT
        )


def start_ranks(args: list[str], world_size: int, cwd: Path) -> list[subprocess.Popen]:
    """Start ``world_size`` ranks as plain processes with torchrun's variables but no torchrun
    agent: nothing outside ddpinfer notices a dead rank, so this tests ddpinfer's own liveness."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = subprocess_env()
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        with open(cwd / f"rank{rank}.out", "w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(LAUNCHER), *args],
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def wait_for(predicate, timeout: float = 600, interval: float = 0.1) -> None:
    """Wait for an event. The bound only says when to give up: generous for a busy machine."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def run_in_process(overrides: list[str], cwd: Path | None = None):
    """Compose the config as the entry point does and run it in this process (a world of one),
    in ``cwd`` when given. Reference outputs come from here: it costs no process start-up (torch
    and transformers are imported already), which keeps the suite short."""
    from hydra import compose, initialize_config_dir

    from ddpinfer.config import register_configs, to_config
    from ddpinfer.runner import run

    register_configs()
    if os.environ.get("PYTEST_XDIST_WORKER") and not any(
        o.startswith("cpu_threads=") for o in overrides
    ):  # the suite's workers share the cores: one thread each, as torchrun's ranks have
        overrides = [*overrides, "cpu_threads=1"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=overrides))
    before = os.getcwd()
    os.chdir(cwd or before)
    try:
        return run(cfg, environ={})
    finally:
        os.chdir(before)


FAST_LIVENESS = ["run.heartbeat_s=0.5", "run.dead_after_s=4"]
"""Liveness settings that notice a dead rank within seconds, for tests that kill one."""


def resumable_job(tmp_path: Path, model: Path, rows: int) -> list[str]:
    """A job of ``rows`` inputs in units of 4 and batches of 2 (slowed down with fault.delay_s,
    it can be interrupted mid-way), writing out.jsonl in run directory runs/job."""
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(rows)]
    write_jsonl(tmp_path / "in.jsonl", texts)
    return [
        f"model.path={model}",
        "data.path=in.jsonl",
        "data.id_field=uid",
        "data.unit_size=4",
        "batch_size=2",
        "output.path=out.jsonl",
        "run.name=job",
    ]


def small_units(data: Path, out: Path, runs: Path) -> list[str]:
    """Arguments for a run of ``data`` (ids in ``uid``) in units of 3 and batches of 4, so that
    a few texts make several units per rank: its output and run root."""
    return [
        f"data.path={data}",
        "data.id_field=uid",
        f"output.path={out}",
        f"run.root={runs}",
        "data.unit_size=3",
        "batch_size=4",
    ]


def job_parts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs" / "job" / "parts").glob("*/unit-*.arrow"))


def run_files(parts: Path) -> list[Path]:
    """Every file in a run directory's ``parts/`` folder: its journals, and the parts and
    fragments in its units' folders (``parts/0000/``...)."""
    return sorted(p for p in parts.rglob("*") if p.is_file()) if parts.is_dir() else []


def assert_complete(tmp_path: Path, rows: int) -> None:
    """out.jsonl holds every input once, in order."""
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == [f"doc-{i}" for i in range(rows)]


def save_dataset(folder: Path, records: list[dict], num_shards: int = 1, split: str | None = None):
    """``records`` written by ``datasets``' ``save_to_disk`` (as a DatasetDict with one more
    split, "other", when ``split`` is given): the folder users pass as data.path."""
    import datasets

    data = datasets.Dataset.from_list(records)
    if split is not None:
        data = datasets.DatasetDict({"other": data.select(range(1)), split: data})
    data.save_to_disk(str(folder), num_shards=num_shards if split is None else None)
    return folder


def split_jsonl(path: Path, parts: int) -> list[Path]:
    """The lines of ``path`` in ``parts`` files ``<stem>-K.jsonl`` beside it (K from 0)."""
    lines = path.read_text().splitlines(keepends=True)
    size = -(-len(lines) // parts)
    files = []
    for k in range(parts):
        part = path.with_name(f"{path.stem}-{k}.jsonl")
        part.write_text("".join(lines[k * size : (k + 1) * size]))
        files.append(part)
    return files
