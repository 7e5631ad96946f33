"""``python -m ddpinfer`` and the ``ddpinfer`` command: what ``launch/infer.py`` does, from any
folder (``torchrun --nproc_per_node=4 -m ddpinfer ...`` for several ranks). The config files
are the checkout's ``conf/`` (ddpinfer is installed from a checkout: ``pip install -e .``)."""

# ruff: noqa: E402
from ddpinfer.torch_extensions import hide_unloadable

hide_unloadable()  # first: torch extensions built for another torch would break transformers

import sys
from pathlib import Path

import hydra

from ddpinfer.config import register_configs
from ddpinfer.launch.stopping import config_errors_exit_2
from ddpinfer.runner import main as run_main

CONF = Path(__file__).resolve().parents[2] / "conf"


def main() -> None:
    if not (CONF / "config.yaml").is_file():
        sys.exit(
            f"ddpinfer: its config files are not at {CONF}. HINT: install ddpinfer from its "
            "checkout with pip install -e ., or run launch/infer.py there."
        )
    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(run_main)
    config_errors_exit_2(app)


if __name__ == "__main__":
    main()
