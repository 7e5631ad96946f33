"""The config composes as users override it: through Hydra's compose API, without running."""

import pytest
from helpers import REPO
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from ddpinfer.config import (
    ClassifyTaskConfig,
    Config,
    EmbedTaskConfig,
    GenerateTaskConfig,
    ImageTextTaskConfig,
    register_configs,
    to_config,
)
from ddpinfer.launch.run_dir import resolve_run_dir

register_configs()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_defaults_are_the_embedded_embedding_job():
    cfg = to_config(composed())
    assert isinstance(cfg, Config) and isinstance(cfg.task, EmbedTaskConfig)
    assert cfg.model.path is None and cfg.data.path is None  # the bundled model and sample
    # pooling and normalize unset: the checkpoint's own modules (plain checkpoints: mean, true)
    assert (cfg.task.pooling, cfg.task.normalize, cfg.batch_size) == (None, None, 256)
    assert cfg.batch.max_tokens is None  # from the device: 1024 on CPU, 16384 on CUDA


def test_batch_packing_takes_hydra_booleans():
    assert to_config(composed()).batch.packing == "auto"
    assert to_config(composed("batch.packing=true")).batch.packing == "true"
    assert to_config(composed("batch.packing=False")).batch.packing == "false"


def test_hydra_does_not_invent_per_rank_directories():
    hydra = composed().hydra
    assert hydra.job.chdir is False
    assert hydra.run.dir == "." and hydra.output_subdir is None
    assert "now" not in OmegaConf.to_yaml(composed().hydra.run)


@pytest.mark.parametrize(
    "task, schema",
    [
        ("classify", ClassifyTaskConfig),
        ("generate", GenerateTaskConfig),
        ("image_text", ImageTextTaskConfig),
    ],
)
def test_task_group_selects_its_schema(task, schema):
    cfg = to_config(composed(f"task={task}", "model.path=/m"))
    assert isinstance(cfg.task, schema)


def test_overrides_reach_the_schema():
    cfg = to_config(
        composed(
            "task=generate",
            "task.max_new_tokens=7",
            "batch_size=3",
            "data.text_field=prompt",
            "output.format=parquet",
        )
    )
    assert (cfg.task.max_new_tokens, cfg.batch_size, cfg.data.text_field) == (7, 3, "prompt")
    assert cfg.output.format == "parquet"


@pytest.mark.parametrize(
    "override", ["batch_sz=3", "task.poolin=cls", "model.pth=/x", "batch_size=abc", "task=foo"]
)
def test_typos_and_wrong_types_are_rejected(override):
    with pytest.raises(ConfigCompositionException):
        composed(override)


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=0", "batch_size=0 must be positive"),
        ("device=gpu", "device='gpu' is not one of auto, cpu, cuda"),
        ("model.dtype=fp8", "model.dtype='fp8'"),
        ("task.pooling=sum", "task.pooling='sum'"),
        ("task.precision=int8", "task.precision=int8 needs each dimension's range"),
        ("task.ranges=r.npy", "task.ranges applies to task.precision=int8|uint8 only"),
        ("model.gpus_per_replica=0", "model.gpus_per_replica=0 must be positive"),
        ("log.level=chatty", "log.level='CHATTY' is not one of"),
        ("log.progress_every_s=0", "log.progress_every_s=0"),
        ("task=custom", "task.target is required"),
        ("batch.packing=sometimes", "batch.packing='sometimes' is not one of auto, true, false"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        to_config(composed(override))


def test_log_keys_reach_the_schema_and_log_level_is_gone():
    cfg = to_config(composed("log.level=debug", "log.progress=false", "log.progress_every_s=5"))
    assert (cfg.log.level, cfg.log.progress, cfg.log.progress_every_s) == ("DEBUG", False, 5)
    with pytest.raises(ConfigCompositionException):
        composed("log_level=DEBUG")  # now log.level


def test_image_text_and_replica_keys_reach_the_schema():
    cfg = to_config(
        composed(
            "task=image_text",
            "task.chat_template=false",
            "data.image_field=pictures",
            "model.gpus_per_replica=2",
            "model.colocate=[vpm,resampler]",
            "model.max_memory=30GiB",
        )
    )
    assert cfg.task.chat_template is False and cfg.task.max_new_tokens == 64
    assert cfg.data.image_field == "pictures"
    assert (cfg.model.gpus_per_replica, cfg.model.colocate) == (2, ["vpm", "resampler"])
    assert cfg.model.max_memory == "30GiB"


def test_run_dir_follows_from_the_command_not_the_clock(tmp_path):
    a = to_config(composed(f"output.path={tmp_path}/out.jsonl"))
    b = to_config(composed(f"output.path={tmp_path}/out.jsonl", "batch_size=8"))
    c = to_config(composed(f"output.path={tmp_path}/other.jsonl"))
    assert resolve_run_dir(a) == resolve_run_dir(b) != resolve_run_dir(c)
    assert resolve_run_dir(a).name.startswith("out-")
    assert str(resolve_run_dir(to_config(composed("run.dir=/x/y")))) == "/x/y"
    assert str(resolve_run_dir(to_config(composed("run.name=n", "run.root=/r")))) == "/r/n"


def test_input_and_keep_fields_keys_reach_the_schema_and_clashes_are_refused():
    from ddpinfer.config import ConfigError
    from ddpinfer.errors import UserError
    from ddpinfer.plan.task_needs import check_keep_fields

    cfg = to_config(
        composed("data.path=shards/*.jsonl", "data.split=train", "output.keep_fields=[title,lang]")
    )
    assert (cfg.data.split, cfg.output.keep_fields) == ("train", ["title", "lang"])
    assert to_config(composed("data.format=hf_dataset")).data.format == "hf_dataset"
    with pytest.raises(ConfigError, match=r"output.keep_fields=\['id'\] must name .* other than"):
        to_config(composed("output.keep_fields=[id]"))
    with pytest.raises(UserError, match="'embedding', a column task=embed writes itself"):
        check_keep_fields(to_config(composed("output.keep_fields=[title,embedding]")))
    check_keep_fields(cfg)
