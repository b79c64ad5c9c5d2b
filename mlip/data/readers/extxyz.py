"""Extended-XYZ files (3BPA, acac, MACE-style training sets) with configurable label keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlip.data.readers.ase_file import iter_ase_file
from mlip.data.readers.base import MalformedFileError
from mlip.data.structure import DataError, Structure


def locate_malformed_frame(path: str | Path) -> tuple[int, int, str] | None:
    """(frame, line number, reason) of the first frame whose layout is broken, or None.

    ASE indexes the whole file before yielding a frame, so its errors do not say which
    frame failed; this walks the count lines and atom rows to find it.
    """
    with open(path) as handle:
        lines = handle.read().splitlines()
    k, frame = 0, 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        try:
            n_atoms = int(lines[k].split()[0])
        except ValueError:
            return frame, k + 1, f"expected an atom count, found {lines[k][:60]!r}"
        rows = lines[k + 2 : k + 2 + n_atoms]
        if len(rows) < n_atoms:
            return frame, k + 1, f"header says {n_atoms} atoms, but the file ends after {len(rows)} rows"
        width = len(rows[0].split()) if rows else 0
        for r, row in enumerate(rows):
            if len(row.split()) != width or width < 4:
                return frame, k + 3 + r, f"atom row {r} has {len(row.split())} columns, expected {width}: {row[:60]!r}"
        k += 2 + n_atoms
        frame += 1
    return None


def iter_extxyz(path: str | Path, **options) -> Iterator[Structure]:
    """Yield the frames of an extxyz file; options as `iter_ase_file` (keys, on_error, skipped)."""
    try:
        yield from iter_ase_file(path, format="extxyz", **options)
    except MalformedFileError as exc:
        where = locate_malformed_frame(path)
        if where is None:
            raise
        frame, line, reason = where
        raise MalformedFileError(f"{path}#{frame}: malformed extxyz record at line {line}: {reason}") from exc


def read_extxyz(path: str | Path, **options) -> list[Structure]:
    """Read every frame of an extxyz file; an empty file is an error."""
    structures = list(iter_extxyz(path, **options))
    if not structures:
        raise DataError(f"{path}: file holds no structures")
    return structures
