"""task=custom: the README's example class (examples/word_count_task.py) on two ranks, extra
task keys passed through, and errors in the user's code recorded like a model's."""

import json

import pytest
from helpers import (
    REPO,
    TEXTS,
    check,
    launch,
    read_jsonl,
    run_in_process,
    small_units,
    write_jsonl,
    write_records,
)

from ddpinfer.compute.tasks.custom import CustomTask, CustomTaskError, load_class
from ddpinfer.config import CustomTaskConfig
from ddpinfer.inputs.readers import Row
from ddpinfer.plan.fingerprint import FingerprintMismatch

EXAMPLE = "examples.word_count_task:WordCountTask"


def test_target_must_name_a_module_and_a_class():
    with pytest.raises(ValueError, match="package.module:ClassName"):
        CustomTaskConfig(target="examples.word_count_task")
    with pytest.raises(CustomTaskError, match="cannot import no_such_module.*HINT"):
        load_class("no_such_module:Task")
    with pytest.raises(CustomTaskError, match="has no class Nope"):
        load_class(f"{REPO}/examples/word_count_task.py:Nope")


class NoLengths:
    def __call__(self, texts, rows):
        return [{"n": len(t)} for t in texts]


def test_without_lengths_every_text_weighs_one_and_keeps_its_place():
    task = CustomTask(NoLengths(), device=None)
    items = task.prepare([Row(index=i, id=i, text=t) for i, t in enumerate(["bb", "a"])])
    assert [task.cost(item) for item in items] == [1, 1]
    assert task(task.collate(items), [0, 1]) == [{"n": 2}, {"n": 1}]


@pytest.mark.slow
def test_example_runs_on_two_ranks_with_extra_keys_and_a_failing_input(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "counts.jsonl"
    args = [
        "task=custom",
        f"task.target={EXAMPLE}",
        "+task.lowercase=true",
        "+task.fail_on=france",
        *small_units(data, out, tmp_path / "runs"),
    ]
    result = check(launch(args, nproc=2, cwd=REPO))  # the module is found from the repo root
    records = read_jsonl(out)
    failing = TEXTS.index("what is the capital of france?")
    assert [r["id"] for r in records] == [f"doc-{i}" for i in range(len(TEXTS)) if i != failing]
    expected = [t for i, t in enumerate(TEXTS) if i != failing]
    assert [r["words"] for r in records] == [len(t.split()) for t in expected]
    assert records[0]["longest"] == "quick"
    run_dir = next((tmp_path / "runs").iterdir())
    errors = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == [f"doc-{failing}"]
    assert "ValueError: refusing an input that contains 'france'" in errors[0]["error"]
    assert "1 error(s)" in result.stderr
    # the extra keys are part of the fingerprint: other settings never mix with finished work
    changed = launch([*args[:2], "+task.lowercase=false", *args[3:]], nproc=2, cwd=REPO)
    assert changed.returncode != 0 and "task.lowercase: True -> False" in changed.stderr


def test_a_kept_field_the_class_returns_itself_is_refused_before_any_work(tmp_path):
    records = [
        {"uid": f"doc-{i}", "text": t, "words": "an input field"} for i, t in enumerate(TEXTS)
    ]
    data = write_records(tmp_path / "in.jsonl", records)
    args = [
        "task=custom",
        f"task.target={EXAMPLE}",
        *small_units(data, tmp_path / "counts.jsonl", tmp_path / "runs"),
        "output.keep_fields=[words]",  # WordCountTask returns "words" itself
    ]
    with pytest.raises(
        CustomTaskError, match=r"keep_fields names 'words', a key .* returns itself"
    ):
        run_in_process(args, cwd=REPO)
    assert not list((tmp_path / "runs").glob("*/parts/*/*.arrow"))  # no unit ran


@pytest.mark.slow
def test_the_class_code_is_part_of_the_fingerprint(tmp_path):
    source = (REPO / "examples" / "word_count_task.py").read_text()
    (tmp_path / "my_task.py").write_text(source)
    data = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    args = [
        "task=custom",
        "task.target=my_task.py:WordCountTask",
        *small_units(data, tmp_path / "counts.jsonl", tmp_path / "runs"),
    ]
    check(launch(args, nproc=2, cwd=tmp_path))
    # The class now returns other values: the finished units are not its results.
    (tmp_path / "my_task.py").write_text(source.replace('"words": len(words)', '"words": -1'))
    with pytest.raises(FingerprintMismatch, match=r"task.source: '\w+' -> '\w+'"):
        run_in_process(args, cwd=tmp_path)
    run_in_process([*args, "run.fresh=true"], cwd=tmp_path)
    assert {r["words"] for r in read_jsonl(tmp_path / "counts.jsonl")} == {-1}
