from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never download: the hub is off for this process and every process it starts, set before
# huggingface_hub is imported (it reads the variable once). The product must not need it
# (tests/test_first_use.py checks a mistyped folder with downloads on).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config: pytest.Config) -> None:
    """Set up a process that runs tests; xdist's controller only hands them out, and skips the
    imports (seconds of torch and transformers before any worker starts)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    from hypothesis import HealthCheck, settings

    from ddpinfer.torch_extensions import hide_unloadable

    # before transformers is imported: extensions built for another torch break it
    hide_unloadable()
    # Property tests check what happens, not how fast: on a busy machine an example can take 5x
    # its usual time (Hypothesis' 200 ms deadline failed at 900 ms), and so can generating one.
    settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("suite")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): a worker per core for the fast selection, whose tests
    run in the worker's own process; one more for the whole suite, whose slow tests mostly wait
    on the processes they start (measured on 2 cores: ``-m "not slow"`` 56 s on 2 workers, 63 s
    on 3)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    fast_only = "not slow" in (config.option.markexpr or "")
    return max(1, cores or 1) + (0 if fast_only else 1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bert_embedder(models_dir) -> Path:
    import tiny_models

    return tiny_models.save_bert_embedder(models_dir / "bert-embed")


@pytest.fixture(scope="session")
def bert_classifier(models_dir) -> Path:
    import tiny_models

    return tiny_models.save_bert_classifier(models_dir / "bert-classify")


@pytest.fixture(scope="session")
def gpt2_generator(models_dir) -> Path:
    import tiny_models

    return tiny_models.save_gpt2_generator(models_dir / "gpt2-generate")


@pytest.fixture(scope="session")
def llama_generator(models_dir) -> Path:
    import tiny_models

    return tiny_models.save_llama_generator(models_dir / "llama-generate")


@pytest.fixture(scope="session")
def tiny_llava(models_dir) -> Path:
    import tiny_models

    return tiny_models.save_llava(models_dir / "llava")


@pytest.fixture
def job(tmp_path, bert_embedder, request) -> tuple[Path, list[str]]:
    """A resumable job (helpers.resumable_job) of the test module's ``N`` inputs: the folder it
    runs in, and its arguments."""
    from helpers import resumable_job

    return tmp_path, resumable_job(tmp_path, bert_embedder, request.module.N)
