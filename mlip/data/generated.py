"""Datasets generated on first use: written once, atomically, and refused if made otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import ase.io


def write_once(path: str | os.PathLike, make, tag: str, **params) -> str:
    """Return ``path``, first writing ``make(**params)`` there as extxyz if it does not exist
    (atomic write). The first structure records ``params`` under ``tag``: a file made with other
    parameters is refused, so a larger set never silently trains on a smaller one."""
    path = Path(path)
    if path.exists():
        first = ase.io.read(path, index=0, format="extxyz").info
        made = {key: first.get(f"{tag}_{key}") for key in params}
        made = {key: value.item() if hasattr(value, "item") else value for key, value in made.items()}
        if None not in made.values() and made != params:
            said = lambda values: ", ".join(f"{k}={v}" for k, v in values.items())  # noqa: E731
            raise ValueError(f"{path} was made with {said(made)}, not the {said(params)} asked for: delete it, "
                             f"or give another path")
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    structures = make(**params)
    structures[0].info.update({f"{tag}_{key}": value for key, value in params.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ase.io.write(tmp, structures, format="extxyz")
    os.replace(tmp, path)
    return str(path)
