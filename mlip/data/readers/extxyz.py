"""Extended-XYZ reader with configurable label keys.

ASE puts the standard names (``energy=``, ``forces``, ``stress``) of an extxyz file
into a SinglePointCalculator, and any other name (``REF_energy``) into
``atoms.info`` / ``atoms.arrays``; a key is looked up in both places.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ase
import ase.io
import numpy as np

from mlip.data.structure import DataError, Structure, virial_to_stress


def _lookup(atoms: ase.Atoms, key: str | None, per_atom: bool) -> np.ndarray | float | None:
    if key is None:
        return None
    table = atoms.arrays if per_atom else atoms.info
    if key in table:
        return table[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def structure_from_atoms(
    atoms: ase.Atoms,
    source: str,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    virial_key: str | None = "virial",
) -> Structure:
    """Convert one `ase.Atoms` with labels under the given keys into a `Structure`.

    A key set to None is not read. A virial (eV) is converted to stress (eV/Å³).
    """
    energy = _lookup(atoms, energy_key, per_atom=False)
    forces = _lookup(atoms, forces_key, per_atom=True)
    stress = _lookup(atoms, stress_key, per_atom=False)
    if stress is None:
        virial = _lookup(atoms, virial_key, per_atom=False)
        if virial is not None:
            stress = virial_to_stress(np.asarray(virial, dtype=np.float64), atoms.cell.volume, source)
    info = {k: v for k, v in atoms.info.items() if k not in (energy_key, stress_key, virial_key)}
    try:
        energy_value = None if energy is None else float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: energy {energy!r} under key {energy_key!r} is not a number") from exc
    return Structure(
        atomic_numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell[:],
        pbc=atoms.pbc,
        energy=energy_value,
        forces=forces,
        stress=stress,
        source=source,
        info=info,
    )


def iter_extxyz(
    path: str | Path,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    virial_key: str | None = "virial",
) -> Iterator[Structure]:
    """Yield the frames of an extxyz file as `Structure` records named ``path#index``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such extxyz file")
    frames = ase.io.iread(str(path), index=":", format="extxyz")
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # ASE raises many types for malformed text
            raise DataError(f"{path}#{index}: malformed extxyz record ({type(exc).__name__}: {exc})") from exc
        yield structure_from_atoms(atoms, f"{path}#{index}", energy_key, forces_key, stress_key, virial_key)
        index += 1


def read_extxyz(path: str | Path, **keys: str | None) -> list[Structure]:
    """Read every frame of an extxyz file; see `iter_extxyz` for the keys."""
    structures = list(iter_extxyz(path, **keys))
    if not structures:
        raise DataError(f"{path}: file holds no structures")
    return structures
