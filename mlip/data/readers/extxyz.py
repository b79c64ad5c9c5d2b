"""Extended-XYZ files (3BPA, acac, MACE-style training sets) with configurable label keys."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ase.data import atomic_numbers

from mlip.data.readers.ase_file import iter_ase_file
from mlip.data.readers.base import MalformedFileError
from mlip.data.structure import MAX_ATOMIC_NUMBER, DataError, Structure

MIN_ROW_BYTES = 8  # "H 0 0 0\n": the shortest atom row


def _properties(comment: str) -> tuple[int, int] | None:
    """(columns per atom row, column of the species) from a comment line's ``Properties=``;
    None when the line names none (plain XYZ: species and three coordinates)."""
    match = re.search(r"Properties=(\S+)", comment)
    if match is None:
        return None
    fields = match.group(1).strip("\"'").split(":")
    if len(fields) % 3:
        raise ValueError(f"Properties={match.group(1)[:60]} is not name:type:count triples")
    width, species = 0, None
    for name, _, count in zip(fields[::3], fields[1::3], fields[2::3]):
        if name == "species":
            species = width
        width += int(count)
    if species is None:
        raise ValueError("Properties names no species column")
    return width, species


def scan_extxyz(path: str | Path) -> int:
    """Check an extxyz file's layout in one streaming pass, before ASE parses it; the frame count.

    Each frame: an atom count no larger than the bytes left in the file allow, a comment line,
    then that many rows of the width its ``Properties`` give, whose species are known elements.
    Raises `MalformedFileError` naming the frame and line of the first problem. Bounded time
    and memory: a count that claims more atoms than the file can hold stops the scan at once.
    """
    path = Path(path)
    size = path.stat().st_size
    frame, line_number, consumed = 0, 0, 0
    with open(path, "rb") as handle:

        def next_line() -> str | None:
            nonlocal line_number, consumed
            raw = handle.readline()
            if not raw:
                return None
            line_number += 1
            consumed += len(raw)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedFileError(
                    f"{path}#{frame}: line {line_number} is not UTF-8 text (byte {exc.start}): not an extxyz file"
                ) from None

        while True:
            line = next_line()
            if line is None:
                return frame
            if not line.strip():
                continue
            first = line.split()[0]
            try:
                n_atoms = int(first)
            except ValueError:
                raise MalformedFileError(
                    f"{path}#{frame}: line {line_number}: expected an atom count, found {line.strip()[:60]!r}"
                ) from None
            left = size - consumed
            if n_atoms < 1 or n_atoms * MIN_ROW_BYTES > left:
                raise MalformedFileError(
                    f"{path}#{frame}: line {line_number}: header says {n_atoms} atoms, but only {left} bytes "
                    f"follow (at least {MIN_ROW_BYTES} per atom row)"
                )
            comment = next_line()
            if comment is None:
                raise MalformedFileError(f"{path}#{frame}: the file ends before the comment line of this frame")
            try:
                layout = _properties(comment)
            except ValueError as exc:
                raise MalformedFileError(f"{path}#{frame}: line {line_number}: {exc}") from None
            width, species = layout if layout is not None else (None, 0)
            for row in range(n_atoms):
                line = next_line()
                if line is None:
                    raise MalformedFileError(
                        f"{path}#{frame}: header says {n_atoms} atoms, but the file ends after {row} rows"
                    )
                columns = line.split()
                if (width is not None and len(columns) != width) or len(columns) < 4:
                    expected = width if width is not None else "at least 4"
                    raise MalformedFileError(f"{path}#{frame}: line {line_number}: atom row {row} has "
                                             f"{len(columns)} columns, expected {expected}: {line.strip()[:60]!r}")
                symbol = columns[species]
                if symbol not in atomic_numbers and not (symbol.isdigit() and 0 < int(symbol) <= MAX_ATOMIC_NUMBER):
                    raise MalformedFileError(f"{path}#{frame}: line {line_number}: unknown element {symbol[:20]!r}")
            frame += 1


def iter_extxyz(path: str | Path, **options) -> Iterator[Structure]:
    """Yield the frames of an extxyz file; options as `iter_ase_file` (keys, on_error, skipped).

    The layout is checked first (`scan_extxyz`), so ASE never loops over a count the file
    cannot hold and its errors are left for what the scan cannot see (values).
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: no such extxyz file")
    scan_extxyz(path)
    yield from iter_ase_file(path, format="extxyz", **options)


def read_extxyz(path: str | Path, **options) -> list[Structure]:
    """Read every frame of an extxyz file; an empty file is an error."""
    structures = list(iter_extxyz(path, **options))
    if not structures:
        raise DataError(f"{path}: file holds no structures")
    return structures
