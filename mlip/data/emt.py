"""The embedded default dataset: Cu/Au/Ni alloys labelled with ASE's EMT calculator.

Bulk fcc supercells (random occupation, Vegard lattice constant, random strain and
rattle), close-packed and (100) slabs with vacuum (periodic in 3D so stress is
defined), and small non-periodic clusters (energy and forces only). Written once
as extxyz with energy, forces and (for periodic cells) stress.
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron

from mlip.data.generated import write_once

ELEMENTS = ("Cu", "Au", "Ni")
LATTICE_CONSTANT = {"Cu": 3.61, "Au": 4.08, "Ni": 3.52}  # Å, fcc


def _random_alloy(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    weights = rng.dirichlet(np.ones(len(ELEMENTS)))
    atoms.set_chemical_symbols(rng.choice(ELEMENTS, size=len(atoms), p=weights).tolist())
    return atoms


def _vegard(atoms: Atoms) -> float:
    return float(np.mean([LATTICE_CONSTANT[s] for s in atoms.get_chemical_symbols()]))


def _strain(atoms: Atoms, rng: np.random.Generator, amplitude: float) -> None:
    eps = rng.uniform(-amplitude, amplitude, (3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)


def _bulk(rng: np.random.Generator) -> Atoms:
    repeat = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)][rng.integers(4)]
    atoms = _random_alloy(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat), rng)
    atoms.set_cell(atoms.cell[:] * _vegard(atoms) / 3.6, scale_atoms=True)
    _strain(atoms, rng, 0.04)
    atoms.rattle(stdev=rng.uniform(0.02, 0.12), seed=int(rng.integers(2**31)))
    return atoms


def _slab(rng: np.random.Generator) -> Atoms:
    build = fcc111 if rng.random() < 0.5 else fcc100
    atoms = _random_alloy(build("Cu", size=(2, 2, 3), a=3.6, vacuum=5.0), rng)
    atoms.set_cell(atoms.cell[:] * _vegard(atoms) / 3.6, scale_atoms=True)
    atoms.pbc = True
    atoms.info.pop("adsorbate_info", None)
    atoms.rattle(stdev=rng.uniform(0.02, 0.1), seed=int(rng.integers(2**31)))
    return atoms


def _cluster(rng: np.random.Generator) -> Atoms:
    atoms = _random_alloy(Icosahedron("Cu", noshells=2, latticeconstant=3.6), rng)
    atoms.positions *= _vegard(atoms) / 3.6
    atoms.rattle(stdev=rng.uniform(0.02, 0.1), seed=int(rng.integers(2**31)))
    atoms.center()
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = False
    return atoms


def make_emt_structures(n_structures: int = 400, seed: int = 0) -> list[Atoms]:
    """Generate labelled alloy structures: 65% bulk, 25% slabs, 10% clusters."""
    rng = np.random.default_rng(seed)
    structures = []
    for k in range(n_structures):
        fraction = k / n_structures
        atoms = _bulk(rng) if fraction < 0.65 else _slab(rng) if fraction < 0.9 else _cluster(rng)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            results["stress"] = atoms.get_stress(voigt=True)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["config_type"] = ("bulk", "slab", "cluster")[int(fraction >= 0.65) + int(fraction >= 0.9)]
        structures.append(atoms)
    return structures


def ensure_emt_dataset(path: str | os.PathLike, n_structures: int = 400, seed: int = 0) -> str:
    """Return ``path``, first writing the EMT dataset there if it does not exist (atomic write;
    a file made with another ``n_structures`` or ``seed`` is refused: `write_once`)."""
    return write_once(path, make_emt_structures, "emt", n_structures=n_structures, seed=seed)
