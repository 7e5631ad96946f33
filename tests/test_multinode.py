"""Two torchrun "nodes" on this host, c10d rendezvous, each with its own run directory: the
no-shared-filesystem path, where parts travel to rank 0 over the process group."""

import sys

import numpy as np
import pytest
from helpers import LAUNCHER, TEXTS, check, free_port, launch, read_jsonl, start, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def base_args(tmp_path, bert_embedder) -> list[str]:
    """The tiny embedder over TEXTS in 6 units of 2; each test adds what it is about."""
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    return [f"model.path={bert_embedder}", "data.path=in.jsonl", "data.unit_size=2"]


def test_two_nodes_without_a_shared_filesystem(tmp_path, base_args):
    common = [*base_args, "data.id_field=uid", "batch_size=4"]
    single = tmp_path / "single.jsonl"
    check(launch([*common, f"output.path={single}", "run.dir=single"], cwd=tmp_path))

    port = free_port()
    procs = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=2",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=two-nodes",
            str(LAUNCHER),
            *common,
            f"run.dir=node{node}/run",
            f"output.path=node{node}/out.jsonl",
        ]
        procs.append(start(cmd, tmp_path, tmp_path / f"node{node}.log"))
    codes = [p.wait(timeout=300) for p in procs]
    logs = "\n".join((tmp_path / f"node{n}.log").read_text() for n in (0, 1))
    assert codes == [0, 0], logs

    # c10d assigns node ranks by arrival: exactly one node held rank 0 and wrote the output.
    outputs = [p for p in tmp_path.glob("node*/out.jsonl")]
    assert len(outputs) == 1, logs
    assert "no shared filesystem with rank(s)" in logs
    ours, reference = read_jsonl(outputs[0]), read_jsonl(single)
    assert [r["id"] for r in ours] == [r["id"] for r in reference]
    np.testing.assert_allclose(
        [r["embedding"] for r in ours], [r["embedding"] for r in reference], atol=1e-5
    )
    # rank 0's node received every part; the other node kept only its own.
    main_parts = list((outputs[0].parent / "run" / "parts").glob("unit-*.arrow"))
    assert len(main_parts) == 6


def test_forced_transfer_on_one_node(tmp_path, base_args):
    args = [*base_args, "output.shared_fs=false", "output.path=out.jsonl"]
    result = check(launch(args, nproc=2, cwd=tmp_path))
    assert "receiving their parts" in result.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == list(range(len(TEXTS)))


def test_a_failing_rank_fails_the_job(tmp_path, base_args):
    args = [*base_args, "output.path=out.jsonl", "fault.rank=1"]
    result = launch(args, nproc=2, cwd=tmp_path)
    assert result.returncode != 0
    assert "injected fault on rank 1" in result.stderr + result.stdout
    assert not (tmp_path / "out.jsonl").exists()
