"""task=image_text over a tiny random LLaVA: batched, multi-rank output equals per-record
``model.generate``; a missing image stops the run before model work, naming file and line; an
image that does not decode is recorded as that input's error and the rest runs."""

import pytest
import torch
from helpers import (
    check,
    launch,
    read_jsonl,
    run_in_process,
    write_image,
    write_image_inputs,
    write_records,
)
from PIL import Image

from ddpinfer.inputs.readers import InputError

UNIT_OF_1 = "data.unit_size=1"


@pytest.fixture
def dataset(tmp_path):
    return write_image_inputs(tmp_path)


def args(tmp_path, model, data, out, *extra):
    return [
        "task=image_text",
        f"model.path={model}",
        f"data.path={data}",
        "data.id_field=uid",
        f"output.path={out}",
        f"run.root={tmp_path / 'runs'}",
        "task.max_new_tokens=6",
        *extra,
    ]


def per_record_generate(model_path, records, folder, max_new_tokens):
    """The reference: each record alone through the processor and ``model.generate``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    texts = []
    for record in records:
        paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
        images = [Image.open(folder / p).convert("RGB") for p in paths]
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": record["text"]}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )
        inputs = processor(images=images, text=[prompt], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        texts.append(processor.tokenizer.decode(new, skip_special_tokens=True))
    return texts


@pytest.mark.slow
def test_two_ranks_batched_equal_per_record_generate(tmp_path, tiny_llava, dataset):
    data, records = dataset
    out = tmp_path / "out.jsonl"
    extra = ("batch_size=4", "data.unit_size=3")
    check(launch(args(tmp_path, tiny_llava, data, out, *extra), nproc=2, cwd=tmp_path))
    result = read_jsonl(out)
    assert [r["id"] for r in result] == [r["uid"] for r in records]
    expected = per_record_generate(tiny_llava, records, tmp_path, 6)
    assert [r["generated_text"] for r in result] == expected
    assert any(text for text in expected)


def test_sampling_is_seeded_per_row_whatever_the_batch(tmp_path, tiny_llava, dataset):
    data, records = dataset
    sample = ("task.do_sample=true", "task.top_k=20", "seed=5")
    outputs = []
    for name, batch in (("greedy", "batch_size=4"), ("s4", "batch_size=4"), ("s1", "batch_size=1")):
        out = tmp_path / f"{name}.jsonl"
        extra = (batch, *(sample if name != "greedy" else ()), f"run.name={name}")
        run_in_process(args(tmp_path, tiny_llava, data, out, *extra))
        outputs.append([r["generated_text"] for r in read_jsonl(out)])
    greedy, batched, alone = outputs
    assert batched == alone != greedy


def test_missing_image_fails_before_model_work_naming_file_and_line(tmp_path, dataset):
    data, records = dataset
    records[2]["image"] = "img/nowhere.png"
    write_records(tmp_path / "in.jsonl", records)
    not_a_model = tmp_path / "not-a-model"  # loading it would fail: the image check comes first
    not_a_model.mkdir()
    with pytest.raises(InputError, match=r"in.jsonl:3: field 'image': image 'img/nowhere.png' "):
        run_in_process(args(tmp_path, not_a_model, data, tmp_path / "out.jsonl"))
    assert not list(tmp_path.glob("runs/*/parts/*"))


def test_corrupt_and_missing_images_are_recorded_and_the_rest_runs(tmp_path, tiny_llava, dataset):
    data, records = dataset
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records[1]["image"] = ["img/1.png", "img/corrupt.png"]
    records[4]["image"] = "img/gone.png"
    write_records(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    result = run_in_process(
        args(tmp_path, tiny_llava, data, out, "data.on_error=skip", "data.max_bad=2")
    )
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids == ["q0", "q2", "q3", "q5", "q6"]
    errors = {e["id"]: e["error"] for e in read_jsonl(result.run_dir / "errors.jsonl")}
    assert set(errors) == {"q1", "q4"}
    assert str(tmp_path / "img" / "corrupt.png") in errors["q1"] and "decode" in errors["q1"]
    assert "in.jsonl:5" in errors["q4"] and "gone.png" in errors["q4"]


def test_without_chat_template_the_text_goes_in_as_is(tmp_path, tiny_llava, dataset):
    data, records = dataset
    records = [{**r, "image": [r["image"]]} for r in records if isinstance(r["image"], str)]
    records = [{**r, "text": "<image>\n" + r["text"]} for r in records]
    write_records(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    run_in_process(args(tmp_path, tiny_llava, data, out, "task.chat_template=false"))
    assert [r["id"] for r in read_jsonl(out)] == [r["uid"] for r in records]


def test_image_field_is_read_from_csv_and_parquet_and_checked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ddpinfer.inputs import images
    from ddpinfer.inputs.readers import open_spec, read_rows

    write_image(tmp_path / "a.png", 0, (8, 8))
    fields = (("picture", images.check_paths),)
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("text,picture\nfirst,a.png\nsecond,b.png\n")
    rows = list(read_rows(open_spec(str(csv_path), "auto", "text", None, True, fields)))
    assert rows[0].fields == {"picture": [str(tmp_path / "a.png")]}
    assert rows[1].error and "in.csv:3: field 'picture': image 'b.png' not found" in rows[1].error
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["x"], "picture": [["a.png", "a.png"]]}), parquet)
    (row,) = read_rows(open_spec(str(parquet), "auto", "text", None, False, fields))
    assert row.fields == {"picture": [str(tmp_path / "a.png")] * 2}
    with pytest.raises(InputError, match="no column 'image'"):
        list(read_rows(open_spec(str(parquet), "auto", "text", None, False, (("image", None),))))


def test_a_processor_without_chat_template_is_refused_before_the_model_loads(
    tmp_path, tiny_llava, dataset
):
    import shutil

    from ddpinfer.compute.model_loading import ModelLoadError

    data, _ = dataset
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_llava, bare)
    (bare / "chat_template.jinja").unlink()
    (bare / "model.safetensors").unlink()  # loading the model would fail differently
    with pytest.raises(ModelLoadError, match=r"no chat template. HINT: set task.chat_template"):
        run_in_process(args(tmp_path, bare, data, tmp_path / "out.jsonl"))


def test_image_windows_are_capped(tmp_path, tiny_llava, dataset, monkeypatch):
    from ddpinfer.compute.tasks.image_text import ImageTextTask

    data, _ = dataset  # 7 inputs in units of 1: an uncapped first window takes 4 units
    monkeypatch.setattr(ImageTextTask, "window_rows", 3)
    result = run_in_process(args(tmp_path, tiny_llava, data, tmp_path / "o.jsonl", UNIT_OF_1))
    log = (result.run_dir / "logs" / "rank0.log").read_text()
    assert "units 0-2 done" in log and "units 0-3 done" not in log
