"""`ase.Atoms` -> `Structure`, shared by every reader that goes through ASE.

ASE puts the standard names (``energy``, ``forces``, ``stress``) of a file into a
SinglePointCalculator, and any other name (``REF_energy``) into ``atoms.info`` /
``atoms.arrays``; a key is looked up in both places. Tags come from
``atoms.arrays["tags"]`` and fixed atoms from `ase.constraints.FixAtoms`.
"""

from __future__ import annotations

import ase
import numpy as np
from ase.constraints import FixAtoms

from mlip.data.structure import DataError, Structure, virial_to_stress


LABEL_KEYS = ("energy_key", "forces_key", "stress_key", "virial_key")
# the one default convention, ASE's own names, in every command (train, eval, relax, preprocess)
DEFAULT_KEYS = {"energy_key": "energy", "forces_key": "forces", "stress_key": "stress", "virial_key": "virial"}


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


def fixed_mask(atoms: ase.Atoms) -> np.ndarray | None:
    """Bool [n_atoms] of the atoms under a FixAtoms constraint, or None without one."""
    constraints = [c for c in atoms.constraints if isinstance(c, FixAtoms)]
    if not constraints:
        return None
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in constraints:
        mask[constraint.get_indices()] = True
    return mask


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
        tags=atoms.arrays.get("tags"),
        fixed=fixed_mask(atoms),
        source=source,
        info=info,
    )


def atoms_from_structure(structure: Structure) -> ase.Atoms:
    """The inverse of `structure_from_atoms` for geometry: tags kept, fixed atoms as `FixAtoms`."""
    atoms = ase.Atoms(
        numbers=structure.atomic_numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc
    )
    if structure.tags is not None:
        atoms.set_tags(structure.tags)
    if structure.fixed is not None and structure.fixed.any():
        atoms.set_constraint(FixAtoms(mask=structure.fixed))
    atoms.info.update({k: v for k, v in structure.info.items() if isinstance(v, (str, int, float, bool))})
    atoms.info["source"] = structure.source
    return atoms


def keys_in_file(path: str) -> str | None:
    """The keys a labels could sit under in the first frame of an ASE-readable file, in words
    (``info: REF_energy, config_type; arrays: REF_forces``), for messages; None if unreadable."""
    try:
        import ase.io

        atoms = ase.io.read(path, index=0)
    except Exception:  # any format ASE cannot read: the message goes without the keys
        return None
    parts = []
    info = sorted(k for k in atoms.info if k != "source")
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    results = sorted(getattr(atoms.calc, "results", {}) or {})
    for name, keys in (("info", info), ("arrays", arrays), ("calculator results", results)):
        if keys:
            parts.append(f"{name}: {', '.join(keys)}")
    return "; ".join(parts) or "no label keys"


def missing_labels_message(path: str, keys: dict) -> str:
    """One line for a file none of whose structures has a label under ``keys``: the keys looked
    for, those the file has, and the setting to change."""
    looked = ", ".join(f"{k}={v!r}" for k, v in keys.items() if k in LABEL_KEYS)
    found = keys_in_file(path)
    has = f"; its first record has {found}" if found else ""
    return (f"{path}: no structure has a label under the keys looked for ({looked}){has}; "
            f"name the file's keys in the reader options, e.g. reader={{energy_key: REF_energy, forces_key: REF_forces}}")
