"""One model replica over two GPUs (model.gpus_per_replica=2): the device map puts the vision
tower and projector with the input embeddings on the first GPU, the rest on the second, and
the results match one GPU's. Skipped unless two GPUs are visible."""

import pytest
import torch
from helpers import check, launch, read_jsonl, write_image_inputs

pytestmark = [
    pytest.mark.multigpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2,
        reason="needs two CUDA devices",
    ),
]


def run(tmp_path, model, name, *extra):
    out = tmp_path / f"{name}.jsonl"
    args = [
        "task=image_text",
        f"model.path={model}",
        f"data.path={tmp_path / 'in.jsonl'}",
        "data.id_field=uid",
        f"output.path={out}",
        f"run.root={tmp_path / 'runs'}",
        "model.dtype=float32",
        "task.max_new_tokens=6",
        "device=cuda",
        *extra,
    ]
    return check(launch(args, cwd=tmp_path)), out


def test_a_replica_over_two_gpus_matches_one_gpu(tmp_path, tiny_llava):
    write_image_inputs(tmp_path)
    _, one = run(tmp_path, tiny_llava, "one")
    # The tiny model is ~200 KB: a 150 KB budget per GPU forces a split.
    split = ("model.gpus_per_replica=2", "model.max_memory=150000")
    result, two = run(tmp_path, tiny_llava, "two", *split)
    log = next((tmp_path / "runs").glob("two-*/logs/rank0.log")).read_text()
    assert "model over GPUs [0, 1]" in log
    first = next(line for line in log.splitlines() if line.strip().startswith("cuda:0:"))
    assert "model.vision_tower" in first and "model.language_model.embed_tokens" in first
    assert any(line.strip().startswith("cuda:1:") for line in log.splitlines())
    assert read_jsonl(one) == read_jsonl(two)


def test_too_few_gpus_for_the_replicas_is_a_clear_error(tmp_path, tiny_llava):
    write_image_inputs(tmp_path)
    n = torch.cuda.device_count()
    out = tmp_path / "x.jsonl"
    args = [
        "task=image_text",
        f"model.path={tiny_llava}",
        f"data.path={tmp_path / 'in.jsonl'}",
        f"output.path={out}",
        f"model.gpus_per_replica={n}",
        "device=cuda",
    ]
    result = launch(args, nproc=2, cwd=tmp_path)
    assert result.returncode == 2
    assert "HINT: start 1 process(es) per node" in result.stderr
