"""Extended-XYZ files (3BPA, acac, MACE-style training sets) with configurable label keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlip.data.readers.ase_file import iter_ase_file
from mlip.data.structure import DataError, Structure


def iter_extxyz(path: str | Path, **options) -> Iterator[Structure]:
    """Yield the frames of an extxyz file; options as `iter_ase_file` (keys, on_error, skipped)."""
    return iter_ase_file(path, format="extxyz", **options)


def read_extxyz(path: str | Path, **options) -> list[Structure]:
    """Read every frame of an extxyz file; an empty file is an error."""
    structures = list(iter_extxyz(path, **options))
    if not structures:
        raise DataError(f"{path}: file holds no structures")
    return structures
