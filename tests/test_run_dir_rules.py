"""The run directory's rules (issue 29): a refused re-run changes nothing, a unit finished as
fragments over several stopped attempts is kept, an interrupted fresh start never resumes stale
work, and a merge with a unit missing says so for every output format. One process, the real
run path; stops come from ``fault.cuda_error_at_batch`` (a transient error: the run fails after
journaling every batch before it)."""

import hashlib
import re

import numpy as np
import pytest
from helpers import TEXTS, read_jsonl, run_files, run_in_process, write_jsonl

from ddpinfer.compute.windows import TransientError
from ddpinfer.plan.fingerprint import FingerprintMismatch

N = 48


def args(tmp_path, model, name="out", *extra):
    return [
        f"model.path={model}",
        f"data.path={tmp_path / 'in.jsonl'}",
        "data.id_field=uid",
        "data.unit_size=4",
        "batch_size=2",
        f"output.path={tmp_path / (name + '.jsonl')}",
        f"run.dir={tmp_path / name}",
        *extra,
    ]


def texts(n=N):
    return [f"{TEXTS[i % len(TEXTS)]} #{i:02d}" for i in range(n)]


def snapshot(folder):
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.lock" and "logs" not in p.parts
    }


def assert_same_output(tmp_path, name, reference="ref"):
    got, want = read_jsonl(tmp_path / f"{name}.jsonl"), read_jsonl(tmp_path / f"{reference}.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    np.testing.assert_allclose(
        [r["embedding"] for r in got], [r["embedding"] for r in want], atol=1e-5
    )


def stop_at_batch(tmp_path, model, batch, *extra):
    with pytest.raises(TransientError):
        run_in_process(
            [*args(tmp_path, model, "out", *extra), f"fault.cuda_error_at_batch={batch}"]
        )


def test_a_refused_rerun_changes_nothing_in_the_run_directory(tmp_path, bert_embedder):
    write_jsonl(tmp_path / "in.jsonl", texts(12))
    run_in_process(args(tmp_path, bert_embedder, "ref"))
    stop_at_batch(tmp_path, bert_embedder, 5, "batch.sort_rows=4")
    before = snapshot(tmp_path / "out")
    assert any(name.startswith("parts/journal-") for name in before)
    with pytest.raises(FingerprintMismatch, match="unit_size: 4 -> 5"):
        run_in_process(args(tmp_path, bert_embedder, "out", "data.unit_size=5"))
    assert snapshot(tmp_path / "out") == before
    run_in_process(args(tmp_path, bert_embedder, "out"))  # the original command finishes
    assert_same_output(tmp_path, "out")


def rows_held(run_dir):
    """The rows the run directory's parts, fragments and journals hold, each once."""
    from ddpinfer.rundir.journal import journals, read_journal
    from ddpinfer.rundir.parts import read_errors, read_table, unit_files

    tables = [read_table(p) for paths in unit_files(run_dir).values() for p in paths]
    tables += [t for path in journals(run_dir) for t in read_journal(path)]
    return {
        r for t in tables for r in t.column("row").to_pylist() + [e["row"] for e in read_errors(t)]
    }


def test_a_unit_finished_as_fragments_over_two_stopped_attempts_is_kept(tmp_path, bert_embedder):
    """The second attempt finishes a unit the first left half done (a fragment), and is
    stopped while that unit's window still has its journal: the third computes only what no
    attempt finished."""
    write_jsonl(tmp_path / "in.jsonl", texts())
    run_in_process(args(tmp_path, bert_embedder, "ref"))
    stop_at_batch(tmp_path, bert_embedder, 9)
    stop_at_batch(tmp_path, bert_embedder, 3)
    names = [p.name for p in run_files(tmp_path / "out" / "parts")]
    assert any(n.startswith("journal-") for n in names) and any(".f-" in n for n in names)
    left = N - len(rows_held(tmp_path / "out"))
    run_in_process(args(tmp_path, bert_embedder, "out"))
    log = (tmp_path / "out" / "logs" / "rank0.log").read_text()
    assert "overlap" not in log and "cannot be trusted" not in log
    assert re.findall(r"(\d+) input\(s\) to do", log)[-1] == str(left)
    assert_same_output(tmp_path, "out")


def run_requeued(overrides):
    """``run_in_process`` as a later attempt of its job (a SLURM requeue)."""
    import helpers
    from hydra import compose, initialize_config_dir

    from ddpinfer.config import register_configs, to_config
    from ddpinfer.runner import run

    register_configs()
    with initialize_config_dir(config_dir=str(helpers.REPO / "conf"), version_base="1.3"):
        cfg = to_config(compose(config_name="config", overrides=[*overrides, "cpu_threads=1"]))
    return run(cfg, environ={"SLURM_RESTART_COUNT": "1"})


def test_an_interrupted_fresh_start_never_resumes_stale_work(tmp_path, bert_embedder, monkeypatch):
    """run.fresh=true with another setting is stopped while it deletes the old parts: its
    requeued attempt (which resumes what the first attempt started) discards the rest, and
    the output is the new setting's."""
    import types

    from ddpinfer.rundir import store

    write_jsonl(tmp_path / "in.jsonl", texts(12))
    run_in_process(args(tmp_path, bert_embedder, "out"))  # stale work: normalized embeddings
    new = args(tmp_path, bert_embedder, "out", "task.normalize=false", "run.fresh=true")
    run_in_process(args(tmp_path, bert_embedder, "ref", "task.normalize=false"))

    class Stopped(Exception):
        pass

    def stopped_midway(path, *a, **k):  # stopped after the first part is gone
        next(iter(sorted(path.glob("*/unit-*")))).unlink()
        raise Stopped

    with monkeypatch.context() as patch:
        patch.setattr(store, "shutil", types.SimpleNamespace(rmtree=stopped_midway))
        with pytest.raises(Stopped):
            run_in_process(new)
    assert len(list((tmp_path / "out" / "parts").glob("*/unit-*"))) == 2  # stale parts left
    with pytest.raises(FingerprintMismatch, match="no fingerprint.json"):  # another command
        run_in_process(args(tmp_path, bert_embedder, "out", "task.normalize=false"))
    run_requeued(new)
    assert_same_output(tmp_path, "out")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "npy", "hf_dataset"])
def test_a_merge_with_a_unit_missing_names_it_in_every_format(tmp_path, fmt):
    from ddpinfer.results.merge import MergeError, merge_parts
    from ddpinfer.rundir.parts import build_table, write_part

    units = [range(0, 2), range(2, 4), range(4, 6)]
    for i in (0, 2):
        emb = np.ones((2, 3), np.float32)
        write_part(tmp_path, i, build_table(list(units[i]), list(units[i]), {"embedding": emb}, []))
    out = tmp_path / ("out" if fmt == "hf_dataset" else f"out.{fmt}")
    with pytest.raises(MergeError, match=r"unit 1 \(rows 2-3\)"):
        merge_parts(tmp_path, units, out, fmt)
    assert not out.exists()


def corrupt(path, rng):
    """One of the ways a crash or a disk damages a file: its tail zeroed (a torn append that
    reads back as zeros), cut short, garbage appended, or bytes flipped at random places."""
    data = bytearray(path.read_bytes())
    kind = rng.choice(["zero tail", "truncate", "garbage", "flip"])
    if kind == "zero tail":  # the last page or so: the end of the last batch's values
        cut = len(data) - int(rng.integers(8, min(200, len(data))))
        data[cut:] = bytes(len(data) - cut)
    elif kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == "garbage":
        data += rng.bytes(int(rng.integers(1, 300)))
    else:
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[at] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    return kind


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_damaged_journals_and_parts_are_found_and_recomputed(tmp_path, bert_embedder, seed):
    """Every stored batch verifies itself: whatever a damaged part or journal holds, the re-run
    keeps only batches whose checksums match, recomputes the rest, and gives the exact output."""
    write_jsonl(tmp_path / "in.jsonl", texts(24))
    run_in_process(args(tmp_path, bert_embedder, "ref"))
    stop_at_batch(tmp_path, bert_embedder, 4)  # mid-window: the journal holds 2 batches
    rng = np.random.default_rng(seed)
    files = run_files(tmp_path / "out" / "parts")
    assert any(p.name.startswith("journal-") for p in files)
    kinds = {p.name: corrupt(p, rng) for p in files}
    print(kinds)
    run_in_process(args(tmp_path, bert_embedder, "out"))
    assert_same_output(tmp_path, "out")
    log = (tmp_path / "out" / "logs" / "rank0.log").read_text()
    damaged = [name for name, kind in kinds.items() if kind != "garbage"]
    assert any(name in log for name in damaged), kinds  # the log names what it left out


def test_the_lock_sweeps_its_own_temporaries_not_a_nested_run_directorys(tmp_path, bert_embedder):
    """run.dir=runs, with another job's run directory runs/other below it: taking the lock of
    runs sweeps what dead writers of runs left, never the other job's temporaries."""
    write_jsonl(tmp_path / "in.jsonl", texts(4))
    hex32 = "c" * 32
    theirs = [
        tmp_path / "runs" / "other" / f".fingerprint.json.tmp-{hex32}",
        tmp_path / "runs" / "other" / "parts" / f".unit-000000.arrow.tmp-{hex32}",
    ]
    ours = [
        tmp_path / "runs" / f".config.yaml.tmp-{hex32}",
        tmp_path / "runs" / "parts" / "0000" / f".unit-000000.arrow.tmp-{hex32}",
        tmp_path / "runs" / "parts" / f".journal-{hex32}.arrows.tmp-{hex32}",
    ]
    for path in theirs + ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a writer's temporary")
    run = [
        a if not a.startswith("run.dir=") else f"run.dir={tmp_path / 'runs'}"
        for a in args(tmp_path, bert_embedder)
    ]
    run_in_process(run)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_fragments_beside_a_whole_part_are_deleted_and_never_come_back(tmp_path):
    from ddpinfer.rundir import store
    from ddpinfer.rundir.parts import build_table, part_path, unit_files, write_part

    units = [range(0, 4)]
    emb = np.ones((4, 2), np.float32)
    write_part(tmp_path, 0, build_table(list(range(4)), list(range(4)), {"embedding": emb}, []))
    write_part(tmp_path, 0, build_table([0, 1], [0, 1], {"embedding": emb[:2]}, []), tag="ab")
    done = store.settle(tmp_path, units, 4, {"x": 1})
    assert done.whole == {0} and [p.name for p in unit_files(tmp_path)[0]] == ["unit-000000.arrow"]
    part_path(tmp_path, 0).unlink()  # the part is dropped later (damaged, or its rows changed)
    assert store.settle(tmp_path, units, 4, {"x": 1}) == store.DoneRows()


def test_renames_and_new_journals_are_made_durable_in_their_folder(tmp_path, monkeypatch):
    """A part's rename fsyncs its units' folder (and parts/, where the folder is new), a
    journal's creation parts/ itself: a crash after them cannot bring back a deleted name or
    lose a new one."""
    from ddpinfer.rundir import atomic, journal
    from ddpinfer.rundir.parts import build_table, parts_dir, write_part

    synced = []
    monkeypatch.setattr(atomic, "fsync_dir", synced.append)
    monkeypatch.setattr(journal, "fsync_dir", synced.append)
    table = build_table([0], [0], {"embedding": np.ones((1, 2), np.float32)}, [])
    write_part(tmp_path, 0, table)
    assert synced == [parts_dir(tmp_path), parts_dir(tmp_path) / "0000"]  # a new folder
    write_part(tmp_path, 1, table)
    assert synced[2:] == [parts_dir(tmp_path) / "0000"]
    log = journal.Journal(tmp_path)
    log.append(table)
    log.append(table)
    assert synced[3:] == [parts_dir(tmp_path)]  # once, when the journal is new


def test_with_shared_fs_false_rank_0s_node_mates_are_fenced_too(tmp_path):
    """output.shared_fs=false skips the probe, so no rank but 0 is known to see its run
    directory: a rank that finds rank 0's lock naming its job (a node-mate of rank 0) writes
    there, and is fenced; a rank whose run directory has no such lock (another node) is not."""
    import json

    from ddpinfer.launch.run_lock import LockFence, LostRunLock

    lock = tmp_path / "run.lock"
    owner = {"token": "ours", "job": "1", "pid": 1, "host": "h", "heartbeat": 0.0, "attempt": 0}
    lock.write_text(json.dumps(owner))
    mate = LockFence.guarding(lock, "ours", sees_run_dir=False)
    elsewhere = LockFence.guarding(tmp_path / "other" / "run.lock", "ours", sees_run_dir=False)
    lock.write_text(json.dumps({**owner, "token": "another-job"}))
    with pytest.raises(LostRunLock):
        mate.check()
    elsewhere.check()


def test_parts_are_spread_over_folders_of_a_thousand_units(tmp_path):
    """A billion-row job's parts are not one flat folder: parts/0000 holds units 0-999,
    parts/0001 the next thousand. A run directory of an earlier ddpinfer, its parts in parts/
    itself, is still read."""
    import shutil

    from ddpinfer.rundir import store
    from ddpinfer.rundir.parts import build_table, file_path, unit_files, write_part

    emb = np.ones((2, 2), np.float32)
    for unit in (0, 999, 1000, 2345):
        rows = [2 * unit, 2 * unit + 1]
        write_part(tmp_path, unit, build_table(rows, rows, {"embedding": emb}, []))
    parts = tmp_path / "parts"
    assert sorted(p.name for p in parts.iterdir()) == ["0000", "0001", "0002"]
    assert [p.name for p in (parts / "0002").iterdir()] == ["unit-002345.arrow"]
    assert (
        file_path(tmp_path, "unit-001000.f-ab.arrow") == parts / "0001" / "unit-001000.f-ab.arrow"
    )
    with pytest.raises(ValueError):
        file_path(tmp_path, "../../etc/passwd")
    shutil.move(parts / "0002" / "unit-002345.arrow", parts / "unit-002345.arrow")  # flat: old
    assert sorted(unit_files(tmp_path)) == [0, 999, 1000, 2345]
    units = [range(2 * u, 2 * u + 2) for u in range(2346)]
    assert store.settle(tmp_path, units, 2, {"x": 1}).whole == {0, 999, 1000, 2345}
