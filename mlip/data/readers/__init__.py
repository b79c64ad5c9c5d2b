"""Readers: one module per file format, each yielding `Structure` records.

`iter_structures` picks the reader from the format name or the file name:

| format      | files                              | reader                     |
|-------------|------------------------------------|----------------------------|
| extxyz      | ``*.xyz``, ``*.extxyz``            | `extxyz.iter_extxyz`       |
| oc20_lmdb   | ``*.lmdb`` (file or folder)        | `oc20_lmdb.iter_oc20_lmdb` |
| oc20_extxyz | ``*.extxyz.xz`` (file or folder)   | `oc20_extxyz.iter_oc20_extxyz` |
| aselmdb     | ``*.aselmdb`` (file or folder)     | `aselmdb.iter_aselmdb`     |
| mptrj       | ``*.json``                         | `mptrj.iter_mptrj`         |
| ase_db      | ``*.db``                           | `ase_db.iter_ase_db`       |
| ase         | anything else `ase.io` reads       | `ase_file.iter_ase_file`   |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

from mlip.data.readers.ase_db import iter_ase_db
from mlip.data.readers.ase_file import iter_ase_file
from mlip.data.readers.atoms import LABEL_KEYS
from mlip.data.readers.aselmdb import iter_aselmdb
from mlip.data.readers.base import SkippedRecords
from mlip.data.readers.extxyz import iter_extxyz, read_extxyz
from mlip.data.readers.mptrj import iter_mptrj
from mlip.data.readers.oc20_extxyz import iter_oc20_extxyz
from mlip.data.readers.oc20_lmdb import iter_oc20_lmdb
from mlip.data.structure import DataError, Structure

READERS: dict[str, Callable[..., Iterator[Structure]]] = {
    "extxyz": iter_extxyz,
    "oc20_lmdb": iter_oc20_lmdb,
    "oc20_extxyz": iter_oc20_extxyz,
    "aselmdb": iter_aselmdb,
    "mptrj": iter_mptrj,
    "ase_db": iter_ase_db,
    "ase": iter_ase_file,
}
SUFFIXES = {".xyz": "extxyz", ".extxyz": "extxyz", ".lmdb": "oc20_lmdb", ".aselmdb": "aselmdb", ".json": "mptrj", ".db": "ase_db"}


def detect_format(path: str | Path) -> str:
    """The reader for ``path`` from its suffix; a folder is named by the files in it."""
    path = Path(path)
    if path.is_dir():
        for pattern, name in (("*.aselmdb", "aselmdb"), ("*.lmdb", "oc20_lmdb"), ("*.extxyz.xz", "oc20_extxyz")):
            if any(path.rglob(pattern)):
                return name
        raise DataError(f"{path}: folder holds no .lmdb, .aselmdb or .extxyz.xz files")
    if path.name.endswith(".extxyz.xz"):
        return "oc20_extxyz"
    return SUFFIXES.get(path.suffix.lower(), "ase")


def reader_options(reader: Callable[..., Iterator[Structure]]) -> set[str]:
    """The options a reader takes; a ``**keys`` catch-all stands for the label keys of `structure_from_atoms`."""
    accepted = set()
    for name, parameter in inspect.signature(reader).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            accepted |= set(LABEL_KEYS)
        elif name not in ("path", "on_error", "skipped"):
            accepted.add(name)
    return accepted


def iter_structures(
    path: str | Path, format: str = "auto", on_error: str = "raise", skipped: SkippedRecords | None = None, **options
) -> Iterator[Structure]:
    """Yield the structures of ``path`` with the reader for ``format`` (``"auto"``: by file name).

    ``options`` go to that reader (label keys, energy choice, ...); an option the reader
    does not take is an error that lists the ones it does.
    """
    name = detect_format(path) if format == "auto" else format
    if name not in READERS:
        raise ValueError(f"unknown data format {name!r}; known: {', '.join(READERS)}")
    reader = READERS[name]
    accepted = reader_options(iter_ase_file if name == "extxyz" else reader) - ({"format"} if name == "extxyz" else set())
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{path}: the {name} reader takes no option(s) {unknown}; it takes {sorted(accepted)}")
    return reader(path, on_error=on_error, skipped=skipped, **options)


def read_structures(path: str | Path, format: str = "auto", **options) -> list[Structure]:
    """Every structure of ``path`` as a list (see `iter_structures`); an empty file is an error."""
    structures = list(iter_structures(path, format, **options))
    if not structures:
        raise DataError(f"{path}: holds no structures")
    return structures


__all__ = ["READERS", "SkippedRecords", "detect_format", "iter_structures", "read_extxyz", "read_structures"]
