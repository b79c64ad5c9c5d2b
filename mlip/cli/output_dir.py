"""The output folder of a command: new, or refused when it holds an earlier run's results."""

from __future__ import annotations

import shutil
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output folder holds files of an earlier run, and ``overwrite`` is off."""


def prepare_output_dir(path: str | Path, overwrite: bool, command: str) -> Path:
    """``path`` made ready for a run: created if absent; if it holds files, refused unless
    ``overwrite`` (then emptied first, so no result of the earlier run stays beside the new ones)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{path} holds the results of an earlier {command} run; give another output_dir=... "
                f"or overwrite=true to replace them")
        for entry in path.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path
