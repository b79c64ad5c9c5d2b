"""The `Structure` record: one labelled atomic configuration in eV, Å, eV/Å, eV/Å³.

Every reader converts its native units and sign conventions into this record, and
nothing downstream converts again. Stress follows ASE: ``stress = (1/V) dE/dε``
as a full 3x3 tensor (negative under compression).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ATOMIC_NUMBER = 118
MIN_CELL_VOLUME = 1e-6  # Å³; smaller than this with pbc is a degenerate cell
MAX_COORDINATE = 1e5  # Å; a position or lattice vector component beyond this is not a structure


class DataError(ValueError):
    """A structure or file that cannot be used; the message names where it came from."""


@dataclass
class Structure:
    """One atomic configuration and its labels.

    Attributes:
        atomic_numbers: [n_atoms] int64.
        positions: [n_atoms, 3] Å.
        cell: [3, 3] Å, rows are lattice vectors (zeros for a molecule).
        pbc: [3] bool.
        energy: total energy in eV, or None when unlabelled.
        forces: [n_atoms, 3] eV/Å, or None.
        stress: [3, 3] eV/Å³ (ASE sign), or None.
        tags: [n_atoms] int64 or None; OC20's 0 subsurface, 1 surface, 2 adsorbate.
        fixed: [n_atoms] bool or None; atoms held fixed in the calculation (their forces
            are constraint forces and can be left out of training).
        source: where the record came from, e.g. ``"train.xyz#12"``; used in errors.
        info: free-form metadata (config_type, sid, fid, magmom, ...).
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    tags: np.ndarray | None = None
    fixed: np.ndarray | None = None
    source: str = "<memory>"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = stress_to_3x3(np.asarray(self.stress, dtype=np.float64), self.source)
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.tags is not None:
            self.tags = np.asarray(self.tags, dtype=np.int64).reshape(-1)
        if self.fixed is not None:
            self.fixed = np.asarray(self.fixed, dtype=bool).reshape(-1)
        self.validate()

    def __repr__(self) -> str:
        labels = [k for k in ("energy", "forces", "stress") if getattr(self, k) is not None]
        return f"Structure({self.source}, n_atoms={self.n_atoms}, pbc={self.pbc.tolist()}, labels={labels})"

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def is_periodic(self) -> bool:
        """True when periodic in all three directions (stress is defined)."""
        return bool(self.pbc.all())

    def validate(self) -> None:
        """Raise `DataError` naming ``source`` if the record is inconsistent or non-finite."""
        where = self.source
        n = self.n_atoms
        if n == 0:
            raise DataError(f"{where}: structure has no atoms")
        if self.positions.shape != (n, 3):
            raise DataError(f"{where}: positions have shape {self.positions.shape}, expected ({n}, 3)")
        bad_z = self.atomic_numbers[(self.atomic_numbers < 1) | (self.atomic_numbers > MAX_ATOMIC_NUMBER)]
        if bad_z.size:
            raise DataError(f"{where}: unknown element with atomic number {int(bad_z[0])}")
        if not np.isfinite(self.positions).all():
            atom = int(np.argwhere(~np.isfinite(self.positions))[0, 0])
            raise DataError(f"{where}: non-finite (NaN/inf) position for atom {atom}")
        if self.cell.shape != (3, 3) or not np.isfinite(self.cell).all():
            raise DataError(f"{where}: cell must be a finite 3x3 matrix, got {self.cell!r}")
        for name, values in (("position", self.positions), ("cell", self.cell)):
            if np.abs(values).max() > MAX_COORDINATE:
                raise DataError(f"{where}: {name} component {np.abs(values).max():.3g} Å (> {MAX_COORDINATE:g} Å): "
                                "absurd coordinates")
        if self.pbc.any():
            # Gram determinant of the periodic lattice vectors: V² for 3D, area² for 2D, length² for 1D.
            periodic_vectors = self.cell[self.pbc]
            if np.linalg.det(periodic_vectors @ periodic_vectors.T) < MIN_CELL_VOLUME**2:
                raise DataError(
                    f"{where}: periodic boundary conditions {self.pbc.tolist()} with a zero-volume or "
                    f"degenerate cell {self.cell.tolist()}; give the lattice vectors or set pbc=False"
                )
        if self.energy is not None and not np.isfinite(self.energy):
            raise DataError(f"{where}: energy is {self.energy}")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise DataError(f"{where}: forces have shape {self.forces.shape}, expected ({n}, 3)")
            if not np.isfinite(self.forces).all():
                atom = int(np.argwhere(~np.isfinite(self.forces))[0, 0])
                raise DataError(f"{where}: non-finite force on atom {atom}")
        if self.stress is not None and not np.isfinite(self.stress).all():
            raise DataError(f"{where}: non-finite stress")
        for name in ("tags", "fixed"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise DataError(f"{where}: {name} have shape {value.shape}, expected ({n},)")


def stress_to_3x3(stress: np.ndarray, source: str = "<memory>") -> np.ndarray:
    """Accept a 3x3 tensor, a 9-vector or a 6-vector in Voigt order (xx, yy, zz, yz, xz, xy)."""
    if stress.shape == (3, 3):
        return stress
    if stress.shape == (9,):
        return stress.reshape(3, 3)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{source}: stress has shape {stress.shape}; expected 3x3, 9 or 6 (Voigt) values")


def virial_to_stress(virial: np.ndarray, volume: float, source: str = "<memory>") -> np.ndarray:
    """Convert a virial (eV) to ASE stress (eV/Å³): ``stress = -virial / V``."""
    if volume <= MIN_CELL_VOLUME:
        raise DataError(f"{source}: a virial needs a cell with non-zero volume")
    return -stress_to_3x3(np.asarray(virial, dtype=np.float64), source) / volume
