"""The console commands, light to start: Hydra composes the config (so ``--help``, ``--cfg job`` and
a mistyped override answer at once), and only then is the command's module imported, with torch
and the rest of what it runs on (`mlip.cli.train` does the same for ``mlip-train``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from mlip.configs import search_path


def _command(tool: str, module: str) -> Callable[[], None]:
    """The entry point of ``tool``: its config composed from ``mlip.configs.<tool>``, then
    ``mlip.cli.<module>.run_command`` on it."""

    @hydra.main(version_base="1.3", config_path=search_path(tool), config_name=tool)
    def task(cfg: DictConfig) -> None:
        importlib.import_module(f"mlip.cli.{module}").run_command(cfg)

    return task


evaluate = _command("eval", "evaluate")
relax = _command("relax", "relax")
md = _command("md", "md")
preprocess = _command("preprocess", "preprocess")
convert = _command("convert", "convert")
