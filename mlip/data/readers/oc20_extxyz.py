"""OC20 S2EF as distributed (``s2ef_train_200K.tar`` ...): ``N.extxyz.xz`` with ``N.txt.xz``.

Each ``.extxyz.xz`` holds frames with raw DFT total energies, ``tags`` and a
``move_mask`` (read by ASE as FixAtoms); line k of the matching ``.txt.xz`` reads
``random<system id>,frame<frame id>,<reference energy>`` for frame k. With
``referenced=True`` (the default, fairchem's ``--ref-energy``) the energy is the
adsorption energy ``E_total - E_reference``: the target of the OC20 S2EF task.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from pathlib import Path

from mlip.data.readers.ase_file import iter_ase_file
from mlip.data.readers.base import SkippedRecords, check_on_error
from mlip.data.structure import DataError, Structure


def _references(path: Path) -> list[tuple[str, str, float]]:
    rows = []
    with lzma.open(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                system, frame, reference = line.strip().split(",")
                rows.append((system, frame, float(reference)))
            except ValueError as exc:
                raise DataError(f"{path}:{number}: expected 'system,frame,reference energy', got {line.strip()!r}") from exc
    return rows


def iter_oc20_extxyz(
    path: str | Path,
    referenced: bool = True,
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
) -> Iterator[Structure]:
    """Yield the frames of one ``.extxyz.xz`` file (with its ``.txt.xz``) or of all in a folder."""
    check_on_error(on_error)
    path = Path(path)
    files = sorted(path.rglob("*.extxyz.xz")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise DataError(f"{path}: no OC20 .extxyz.xz files")
    for file in files:
        txt = file.with_name(file.name.replace(".extxyz.xz", ".txt.xz"))
        if not txt.is_file():
            raise DataError(f"{file}: no matching {txt.name} with the frames' system ids and reference energies")
        references = _references(txt)
        count = 0
        for count, structure in enumerate(iter_ase_file(file, format="extxyz", on_error=on_error, skipped=skipped), 1):
            index = int(structure.source.rsplit("#", 1)[1])
            if index >= len(references):
                raise DataError(f"{structure.source}: {txt.name} has only {len(references)} lines")
            system, frame, reference = references[index]
            structure.info.update(sid=system, fid=frame, reference_energy=reference)
            if referenced and structure.energy is not None:
                structure.energy -= reference
            yield structure
        if on_error == "raise" and count != len(references):
            raise DataError(f"{file}: {count} frames but {len(references)} lines in {txt.name}")
