"""The Hydra configs of the command-line tools, shipped inside the package.

One primary folder per tool: ``train/`` (``train.yaml`` with the ``data/``, ``model/``,
``trainer/`` and ``logger/`` groups), ``preprocess/``, ``eval/``, ``relax/`` and ``md/``.
The tools find them through Hydra's package search path (``pkg://mlip.configs.<tool>``),
so an installed wheel works from any folder. Add your own groups beside ours without
copying them:

    mlip-train --config-dir my_configs data=my_xyz          # my_configs/data/my_xyz.yaml
"""

from pathlib import Path

from omegaconf import OmegaConf

from mlip import __version__

TOOLS = ("train", "preprocess", "eval", "relax", "md", "convert")

# ${mlip_version:} in the configs' help text
OmegaConf.register_new_resolver("mlip_version", lambda: __version__, replace=True)


def config_dir(tool: str) -> Path:
    """The folder of ``tool``'s configs (a real folder, in a checkout and in an installed wheel)."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}: one of {TOOLS}")
    return Path(__file__).resolve().parent / tool


def search_path(tool: str) -> str:
    """Hydra's ``config_path`` for ``tool``: its folder, found as a package."""
    config_dir(tool)
    return f"pkg://mlip.configs.{tool}"
