"""Any file `ase.io` reads (extxyz, cif, POSCAR, ASE trajectories, ...), frame by frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ase.io

from mlip.data.readers.atoms import structure_from_atoms
from mlip.data.readers.base import MalformedFileError, SkippedRecords, check_on_error, convert_record
from mlip.data.structure import DataError, Structure


def iter_ase_file(
    path: str | Path,
    format: str | None = None,
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
    **keys: str | None,
) -> Iterator[Structure]:
    """Yield the frames of ``path`` as `Structure` records named ``path#index``.

    ``format`` is an `ase.io` format name (None: ASE guesses from the name); ``keys``
    name the labels (`structure_from_atoms`: energy_key, forces_key, ...). A frame
    that ASE cannot parse ends the file with a `DataError` (the text after it cannot be
    trusted); a parsed frame with bad content is raised or skipped by ``on_error``.
    """
    check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such {format or 'structure'} file")
    frames = ase.io.iread(str(path), index=":", format=format)
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # ASE raises many types for malformed text
            raise MalformedFileError(
                f"{path}#{index}: malformed {format or 'ASE'} record ({type(exc).__name__}: {exc})"
            ) from exc
        source = f"{path}#{index}"
        structure = convert_record(
            source,
            lambda: structure_from_atoms(atoms, source, **keys),
            on_error,
            skipped,
        )
        if structure is not None:
            yield structure
        index += 1
