"""On a CUDA machine: each process pins cuda:{local_rank}, the model and inputs live there, and
results match the CPU run. Skipped where there is no GPU."""

import numpy as np
import pytest
import torch
from helpers import TEXTS, check, launch, read_jsonl, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def run(tmp_path, name, model, task, *extra, nproc=1):
    out = tmp_path / f"{name}.jsonl"
    args = [
        f"task={task}",
        f"model.path={model}",
        f"data.path={tmp_path / 'in.jsonl'}",
        f"output.path={out}",
        f"run.root={tmp_path / 'runs'}",
        "data.unit_size=4",
        *extra,
    ]
    return launch(args, nproc=nproc, cwd=tmp_path), out


def test_embed_on_gpu_matches_cpu(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    _, cpu = run(tmp_path, "cpu", bert_embedder, "embed", "device=cpu")
    result, gpu = run(tmp_path, "gpu", bert_embedder, "embed", "device=cuda", "model.dtype=float32")
    check(result)
    a, b = read_jsonl(cpu), read_jsonl(gpu)
    np.testing.assert_allclose([r["embedding"] for r in a], [r["embedding"] for r in b], atol=1e-4)
    assert "on cuda" in result.stderr


def test_generate_on_gpu_bf16(tmp_path, gpt2_generator):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    result, out = run(
        tmp_path,
        "gen",
        gpt2_generator,
        "generate",
        "device=cuda",
        "model.dtype=bfloat16",
        "task.max_new_tokens=8",
        "task.do_sample=true",
    )
    check(result)
    assert len(read_jsonl(out)) == len(TEXTS)


def test_more_processes_than_gpus_is_a_clear_error(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    n = torch.cuda.device_count() + 1
    result, _ = run(tmp_path, "toomany", bert_embedder, "embed", "device=cuda", nproc=n)
    assert result.returncode != 0
    assert "GPU(s) are visible" in result.stderr and f"--nproc_per_node={n - 1}" in result.stderr


def test_real_cuda_oom_splits_batches_and_matches_cpu(tmp_path, bert_embedder):
    """A real torch.OutOfMemoryError, not an injected one: cap this process's share of the
    GPU, send one huge batch, and the run still finishes with the CPU's embeddings."""
    from helpers import run_in_process

    texts = [" ".join(["numbers like 12 and 345"] * 30) + f" {i}" for i in range(4096)]
    write_jsonl(tmp_path / "in.jsonl", texts)
    common = [
        f"model.path={bert_embedder}",
        f"data.path={tmp_path / 'in.jsonl'}",
        "model.max_length=128",
        "batch_size=4096",
        "batch.max_tokens=524288",  # all 4096 inputs × 128 tokens in one planned batch
        "data.unit_size=4096",
        f"run.root={tmp_path / 'runs'}",
        "model.dtype=float32",
    ]
    run_in_process([*common, "device=cpu", f"output.path={tmp_path / 'cpu.jsonl'}"])
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 400e6 / total))
    try:
        run_in_process([*common, "device=cuda", f"output.path={tmp_path / 'gpu.jsonl'}"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    log = next((tmp_path / "runs").glob("gpu-*/logs/rank0.log")).read_text()
    assert "out of memory at 4096 inputs" in log
    a, b = read_jsonl(tmp_path / "cpu.jsonl"), read_jsonl(tmp_path / "gpu.jsonl")
    assert len(b) == 4096
    np.testing.assert_allclose([r["embedding"] for r in a], [r["embedding"] for r in b], atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_packed_half_batches_take_the_varlen_kernel_and_match_padded(
    tmp_path, bert_embedder, monkeypatch, dtype
):
    """batch.packing=true on CUDA in half precision: one FlashAttention varlen call per layer
    and batch, embeddings as the padded batches give them (to half precision)."""
    from helpers import run_in_process

    from ddpinfer.compute import packing

    calls = []
    kernel = packing.varlen_attn
    monkeypatch.setattr(packing, "varlen_attn", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    write_jsonl(tmp_path / "in.jsonl", TEXTS * 8)
    common = [
        f"model.path={bert_embedder}",
        f"data.path={tmp_path / 'in.jsonl'}",
        f"run.root={tmp_path / 'runs'}",
        "device=cuda",
        f"model.dtype={dtype}",
    ]
    for setting in ("false", "true"):
        run_in_process(
            [*common, f"batch.packing={setting}", f"output.path={tmp_path}/{setting}.jsonl"]
        )
        assert bool(calls) == (setting == "true")
    padded, packed = read_jsonl(tmp_path / "false.jsonl"), read_jsonl(tmp_path / "true.jsonl")
    np.testing.assert_allclose(
        [r["embedding"] for r in packed], [r["embedding"] for r in padded], atol=2e-2
    )


def test_image_text_on_one_gpu(tmp_path, tiny_llava):
    from helpers import write_image_inputs

    _, records = write_image_inputs(tmp_path)
    common = ("model.dtype=float32", "data.id_field=uid", "task.max_new_tokens=6")
    _, cpu = run(tmp_path, "vlm-cpu", tiny_llava, "image_text", "device=cpu", *common)
    result, gpu = run(tmp_path, "vlm-gpu", tiny_llava, "image_text", "device=cuda", *common)
    check(result)
    assert "on cuda" in result.stderr
    a, b = read_jsonl(cpu), read_jsonl(gpu)
    assert [r["id"] for r in b] == [r["uid"] for r in records] == [r["id"] for r in a]
    # float32 both ways, but cuDNN's TF32 convolutions may flip a near tie in a random model
    same = sum(x["generated_text"] == y["generated_text"] for x, y in zip(a, b))
    assert same >= len(records) - 1
