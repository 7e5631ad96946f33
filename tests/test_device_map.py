"""Device maps for one replica over k GPUs, planned on meta models with fake GPU budgets (no GPU
needed): colocated modules land on the replica's first GPU, no-split modules stay whole, and a
map that would misplace a weight is refused."""

import pytest
import tiny_models
import torch
from accelerate.utils import compute_module_sizes
from torch import nn
from transformers import AutoModelForImageTextToText, PretrainedConfig, PreTrainedModel

from ddpinfer.compute import device_map as dm
from ddpinfer.compute import device_mix as mix
from ddpinfer.compute.batching import BatchLimits
from ddpinfer.compute.tasks.base import Task, pad_token_ids
from ddpinfer.compute.windows import WindowRunner, prepare_window
from ddpinfer.config import FaultConfig, ModelConfig
from ddpinfer.inputs.readers import Row

F32 = torch.float32


def meta_llava():
    config = tiny_models.llava_config(tiny_models.llava_tokenizer())
    return dm.meta_model(AutoModelForImageTextToText, config, F32, False)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Linear(width, width)


class Stack(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))


class LanguageModel(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.model = Stack(width, 6)
        self.model.embed_tokens = nn.Embedding(100, width)
        self.model.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, 100)


class MiniCPMVShaped(PreTrainedModel):
    """MiniCPM-V 2.x's layout: the language model first, the vision tower and resampler after it,
    so a plain in-order plan puts them on the last GPU, away from the input embeddings."""

    config_class = PretrainedConfig
    _no_split_modules = ["Block"]

    def __init__(self, config) -> None:
        super().__init__(config)
        self.llm = LanguageModel(32)
        self.vpm = Stack(32, 2)
        self.resampler = nn.Linear(32, 32)

    def get_input_embeddings(self):
        return self.llm.model.embed_tokens


def meta_minicpmv():
    config = PretrainedConfig()
    config.model_type = "minicpmv"
    with torch.device("meta"):
        return MiniCPMVShaped(config)


def budgets(model, gpus, share):
    total = compute_module_sizes(model, dtype=F32)[""]
    return {g: int(total * share) for g in gpus}


def device_of(device_map, name):
    return next(device_map[k] for k in dm._prefixes(name)[::-1] if k in device_map)


def test_llava_over_two_gpus_keeps_no_split_modules_whole_and_inputs_first():
    model = meta_llava()
    no_split = model._no_split_modules
    whole = {n: m for n, m in model.named_modules() if type(m).__name__ in no_split}
    tensors = {n: [f"{n}.{t}" for t, _ in m.named_parameters()] for n, m in whole.items()}
    names = dm.colocated(model, None)
    assert set(names) == {
        "model.language_model.embed_tokens",
        "model.vision_tower",
        "model.multi_modal_projector",
    }
    device_map = dm.plan(model, [2, 3], budgets(model, [2, 3], 0.75), names, F32)
    for name in names:
        assert device_of(device_map, name) == 2
    assert set(device_map.values()) == {2, 3}  # really split
    for module, params in tensors.items():
        assert len({device_of(device_map, p) for p in params}) == 1, module


def test_modules_colocated_with_the_embeddings_go_to_the_first_gpu_whatever_their_order():
    plain = meta_minicpmv()
    without = dm.plan(plain, [0, 1], budgets(plain, [0, 1], 0.6), [], F32)
    assert device_of(without, "vpm") == 1 and device_of(without, "resampler") == 1

    model = meta_minicpmv()
    names = dm.colocated(model, None)
    assert names == ["llm.model.embed_tokens", "vpm", "resampler"]
    device_map = dm.plan(model, [0, 1], budgets(model, [0, 1], 0.6), names, F32)
    for name in names:
        assert device_of(device_map, name) == 0
    assert device_of(device_map, "llm.lm_head") == 1


def test_colocate_names_are_checked():
    message = r"'vision', which is not a module.* HINT: use module names such as llm"
    with pytest.raises(dm.DeviceMapError, match=message):
        dm.colocated(meta_minicpmv(), ["vision"])


def test_colocated_modules_larger_than_the_first_gpu_are_refused():
    model = meta_minicpmv()
    names = dm.colocated(model, ["llm.model"])
    with pytest.raises(dm.DeviceMapError, match="HINT: raise model.max_memory"):
        dm.plan(model, [0, 1], budgets(model, [0, 1], 0.3), names, F32)


def test_a_model_that_does_not_fit_is_refused():
    model = meta_minicpmv()
    with pytest.raises(dm.DeviceMapError, match=r"does not fit on GPUs \[0, 1\].*gpus_per_replica"):
        dm.plan(model, [0, 1], budgets(model, [0, 1], 0.3), [], F32)


def check_args(model):
    return dict(model.named_modules()), dm._tensor_names(model), [0, 1]


def test_a_map_missing_a_weight_overlapping_or_naming_nothing_is_refused():
    model = meta_minicpmv()
    good = {"llm": 0, "vpm": 1, "resampler": 1}
    dm.check(good, *check_args(model))
    with pytest.raises(dm.DeviceMapError, match=r"no device for 2 weight\(s\), e.g. resampler.w"):
        dm.check({"llm": 0, "vpm": 1}, *check_args(model))
    with pytest.raises(dm.DeviceMapError, match="overlap"):
        dm.check({**good, "vpm.layers.0": 0}, *check_args(model))
    with pytest.raises(dm.DeviceMapError, match="names no module"):
        dm.check({**good, "vision": 0}, *check_args(model))
    with pytest.raises(dm.DeviceMapError, match="does not fit"):
        dm.check({**good, "resampler": "disk"}, *check_args(model))


def test_pin_splits_the_key_that_covers_the_module():
    model = meta_minicpmv()
    device_map = {"": 1}
    dm.pin(device_map, dict(model.named_modules()), "llm.model.embed_tokens", 0)
    assert device_map["llm.model.embed_tokens"] == 0 and device_map["vpm"] == 1
    assert device_map["llm.model.layers"] == 1 and "llm" not in device_map
    dm.check(device_map, *check_args(model))


def test_the_device_mix_message_shows_the_map_and_the_fix():
    device_map = {
        "llm.model.embed_tokens": 0,
        **{f"llm.model.layers.{i}": i // 3 for i in range(6)},
        "llm.model.norm": 1,
        "llm.lm_head": 1,
        "vpm": 1,
        "resampler": 1,
    }
    assert "cuda:0: llm.model.embed_tokens, llm.model.layers.0-2" in dm.describe(device_map)
    assert mix.suggest_colocate(device_map, "llm.lm_head") == [
        "llm.model.embed_tokens",
        "vpm",
        "resampler",
    ]
    model = meta_minicpmv()
    model.hf_device_map = device_map
    error = RuntimeError(f"{mix.DEVICE_MIX}, but found at least two devices, cuda:0 and cuda:1!")
    message = mix.explain_device_mix(model, error)
    assert "cuda:1: llm.model.layers.3-5" in message
    assert "HINT: " in message
    assert "model.colocate=[llm.model.embed_tokens,vpm,resampler]" in message


def test_plan_replica_reads_the_saved_model_and_the_memory_setting(tiny_llava):
    total = compute_module_sizes(meta_llava(), dtype=F32)[""]
    cfg = ModelConfig(path=str(tiny_llava), gpus_per_replica=2, max_memory=str(int(total * 0.75)))
    device_map = dm.plan_replica(AutoModelForImageTextToText, cfg, str(tiny_llava), [4, 5], F32)
    assert device_of(device_map, "model.vision_tower") == 4
    assert set(device_map.values()) == {4, 5}
    with pytest.raises(dm.DeviceMapError, match="model.max_memory='lots' is not a size"):
        dm.gpu_budgets([0], "lots")


class MixedDevicesTask(Task):
    """A task whose forward fails as a badly placed multi-GPU model does."""

    def __init__(self, model) -> None:
        self.model, self.device, self.tokenizer = model, torch.device("cpu"), None

    def prepare(self, rows):
        return [[1, 2, 3] for _ in rows]

    def collate(self, items):
        return pad_token_ids(items, 0)

    def __call__(self, batch, rows):
        raise RuntimeError(f"{mix.DEVICE_MIX}, but found at least two devices, cuda:0 and cuda:3!")


def test_a_forward_mixing_devices_stops_the_run_with_the_map_not_as_bad_inputs():
    model = meta_minicpmv()
    model.hf_device_map = {
        "llm.model.embed_tokens": 0,
        "llm.model.layers.0": 0,
        "llm.model.layers.1": 1,
        "llm.lm_head": 1,
        "vpm": 1,
        "resampler": 1,
    }
    task = MixedDevicesTask(model)
    limits = BatchLimits(max_rows=4, max_tokens=1000)
    rows = [[Row(i, i, "text") for i in range(3)]]
    window = prepare_window(task, [0], rows, limits)
    runner = WindowRunner(task, limits, lambda: None, FaultConfig())
    message = r"(?s)cuda:1: .*vpm.*colocate=\[llm.model.embed_tokens,vpm,resampler\]"
    with pytest.raises(mix.DeviceMixError, match=message):
        runner.run(window, lambda result: None)
