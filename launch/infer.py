"""ddpinfer's entry point.

    python launch/infer.py                                   # one process
    torchrun --nproc_per_node=4 launch/infer.py task=generate model.path=/models/llm \
        data.path=prompts.jsonl output.path=out.jsonl batch_size=16
"""

# ruff: noqa: E402
from ddpinfer.torch_extensions import hide_unloadable

hide_unloadable()  # first: torch extensions built for another torch would break transformers

import hydra
from omegaconf import DictConfig

from ddpinfer.config import register_configs
from ddpinfer.launch.stopping import config_errors_exit_2

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # imported once a config is composed: --help, --cfg and a mistyped key answer without
    # loading the model code (transformers), seconds sooner
    from ddpinfer.runner import main as run_main

    run_main(cfg)


if __name__ == "__main__":
    config_errors_exit_2(main)
