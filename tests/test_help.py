"""`launch/infer.py --help` lists every schema key with its doc; `--cfg job` prints the
composed config, as in any Hydra app."""

import dataclasses
import subprocess
import sys

import yaml
from helpers import LAUNCHER, REPO, subprocess_env

from ddpinfer.config import TASK_SCHEMAS, Config
from ddpinfer.config.help import field_docs


def run_launcher_result(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_launcher(*args: str) -> str:
    result = run_launcher_result(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def schema_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(Config):
        if f.name == "task":
            continue
        if f.default_factory is not dataclasses.MISSING:
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)]
        else:
            keys.append(f.name)
    for schema in TASK_SCHEMAS.values():
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(f.default_factory):  # a group: task.vllm.*
                keys += [f"task.{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)]
            elif f.name != "name":
                keys.append(f"task.{f.name}")
    return keys


def test_help_lists_every_key_with_its_doc():
    text = run_launcher("--help")
    for key in schema_keys():
        assert f"  {key}=" in text, key
    assert "  log.progress=true  (bool)" in text
    assert "  task.target=???  (required)" in text  # task=custom's required key
    first_words = " ".join(field_docs(Config)["batch_size"].split()[:6])
    assert first_words in text
    assert "task: embed, classify, score, generate, image_text, custom  (task=<name>" in text
    assert "schema" not in text.split("== Keys ==")[0]  # no internal entries among the choices


def test_a_mistyped_task_lists_the_tasks_only():
    result = run_launcher_result("task=clasify")
    assert result.returncode == 2 and "classify" in result.stderr
    assert "_schema" not in result.stderr and "task_schema" not in result.stderr  # not choices
    assert run_launcher_result("task=classify_schema").returncode == 2


def test_cfg_job_prints_the_composed_config():
    cfg = yaml.safe_load(run_launcher("--cfg", "job", "task=generate", "batch_size=3"))
    assert cfg["batch_size"] == 3 and cfg["task"]["name"] == "generate"
    assert cfg["log"] == {"level": "INFO", "progress": True, "progress_every_s": 30.0}
    assert "hydra" not in cfg
