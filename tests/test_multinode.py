"""Two torchrun "nodes" on this host, c10d rendezvous, each with its own run directory: the
no-shared-filesystem path, where parts travel to rank 0 over the process group."""

import numpy as np
import pytest
from helpers import (
    TEXTS,
    check,
    free_port,
    launch,
    read_jsonl,
    run_in_process,
    start,
    torchrun_cmd,
    two_node_rendezvous,
    write_jsonl,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def base_args(tmp_path, bert_embedder) -> list[str]:
    """The tiny embedder over TEXTS in 6 units of 2; each test adds what it is about."""
    write_jsonl(tmp_path / "in.jsonl", TEXTS)
    return [f"model.path={bert_embedder}", "data.path=in.jsonl", "data.unit_size=2"]


def launch_two_nodes(tmp_path, args: list[str], nproc: int, tag: str) -> tuple[list[int], str]:
    """Both "nodes" under torchrun with a c10d rendezvous, each with its own run directory and
    output path; the exit codes and both nodes' console output."""
    port = free_port()
    procs = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir(exist_ok=True)
        own = [f"run.dir=node{node}/run", f"output.path=node{node}/out.jsonl"]
        cmd = torchrun_cmd([*args, *own], nproc, *two_node_rendezvous(port, f"two-nodes-{tag}"))
        procs.append(start(cmd, tmp_path, tmp_path / f"node{node}-{tag}.log"))
    codes = [p.wait(timeout=900) for p in procs]
    logs = "\n".join((tmp_path / f"node{n}-{tag}.log").read_text() for n in (0, 1))
    return codes, logs


def assert_same_embeddings(ours: list[dict], reference: list[dict]) -> None:
    assert [r["id"] for r in ours] == [r["id"] for r in reference]
    np.testing.assert_allclose(
        [r["embedding"] for r in ours], [r["embedding"] for r in reference], atol=1e-5
    )


def test_two_nodes_without_a_shared_filesystem(tmp_path, base_args):
    common = [*base_args, "data.id_field=uid", "batch_size=4"]
    single = tmp_path / "single.jsonl"
    run_in_process([*common, f"output.path={single}", "run.dir=single"], cwd=tmp_path)

    codes, logs = launch_two_nodes(tmp_path, common, nproc=2, tag="run")
    assert codes == [0, 0], logs

    # c10d assigns node ranks by arrival: exactly one node held rank 0 and wrote the output.
    outputs = [p for p in tmp_path.glob("node*/out.jsonl")]
    assert len(outputs) == 1, logs
    assert "no shared filesystem with rank(s)" in logs
    assert_same_embeddings(read_jsonl(outputs[0]), read_jsonl(single))
    # rank 0's node received every part; the other node kept only its own.
    main_parts = list((outputs[0].parent / "run" / "parts").glob("*/unit-*.arrow"))
    assert len(main_parts) == 6


def test_a_failed_attempt_keeps_the_remote_nodes_work(tmp_path, base_args):
    """Rank 0 fails after every unit is done, before any part travels: the next attempt
    recomputes nothing the other node finished, except the unit whose input rows changed in
    between, and the output is that of the changed input."""
    common = [*base_args, "data.id_field=uid", "batch_size=4"]
    codes, logs = launch_two_nodes(
        tmp_path, [*common, "fault.rank=0", "fault.at_finish=true"], nproc=1, tag="fail"
    )
    assert codes != [0, 0] and "injected fault on rank 0" in logs, logs
    assert not list(tmp_path.glob("node*/out.jsonl"))
    held = {n: len(list(tmp_path.glob(f"node{n}/run/parts/*/unit-*.arrow"))) for n in (0, 1)}
    assert sorted(held.values()) != [0, 6] and sum(held.values()) == 6, held

    edited = [*TEXTS[:-1], "the last record was edited between the two attempts"]
    write_jsonl(tmp_path / "in.jsonl", edited)
    codes, logs = launch_two_nodes(tmp_path, common, nproc=1, tag="resume")
    assert codes == [0, 0], logs
    assert "6 work unit(s) of up to 2; 1 unit(s) to run" in logs, logs
    assert "unit(s) from an earlier attempt: sent at the end, not recomputed" in logs, logs

    single = tmp_path / "single.jsonl"
    run_in_process([*common, f"output.path={single}", "run.dir=single"], cwd=tmp_path)
    (output,) = tmp_path.glob("node*/out.jsonl")
    assert_same_embeddings(read_jsonl(output), read_jsonl(single))


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


def test_a_node_on_rank_0s_shared_filesystem_does_not_scan_the_input_again(tmp_path, base_args):
    # both "nodes" run in tmp_path: one filesystem, one run directory, one input file
    port = free_port()
    args = [*base_args, "run.dir=run", "output.path=out.jsonl"]
    procs = [
        start(torchrun_cmd(args, 1, *two_node_rendezvous(port, "shared")), tmp_path,
              tmp_path / f"node{node}.log")
        for node in (0, 1)
    ]  # fmt: skip
    codes = [p.wait(timeout=300) for p in procs]
    logs = "\n".join((tmp_path / f"node{n}.log").read_text() for n in (0, 1))
    assert codes == [0, 0], logs
    assert (
        "node 1 reads rank 0's own copy of data.path (a shared filesystem)"
        in (tmp_path / "run" / "logs" / "rank1.log").read_text()
    )
    assert len(read_jsonl(tmp_path / "out.jsonl")) == len(TEXTS)
