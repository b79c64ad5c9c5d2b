"""A crystal set of any size: EMT-labelled multi-element fcc cells, and relaxations with ground truth.

ASE's EMT knows seven fcc metals (Al, Cu, Ag, Au, Ni, Pd, Pt). Each structure is a cubic fcc
supercell of 4-128 atoms holding one to three of them at random (Vegard lattice constant of the
mix), with vacancies in a quarter of the cells, a random symmetric strain of up to 5% and a
rattle of 0.02-0.15 Å. Labels: energy (eV), forces (eV/Å) and stress (eV/Å³, ASE's sign).

The relaxation task: rattled cells (fixed cell) relaxed by EMT itself with ASE's FIRE to
fmax 1e-3 eV/Å; a trained model relaxes the same starts and is scored against that end point.
Labelling runs in ``workers`` processes (EMT is a Python loop: ~5 ms per 50-atom cell).
"""

from __future__ import annotations

import os
from multiprocessing import get_context

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.optimize import FIRE

from mlip.data.generated import write_once

ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
LATTICE_CONSTANT = {"Al": 4.05, "Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92}  # Å
REPEATS = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3), (4, 4, 2))  # 4-128 atoms


def random_crystal(rng: np.random.Generator, max_atoms: int = 128, vacancies: bool = True,
                   strain: float = 0.05, rattle: tuple[float, float] = (0.02, 0.15)) -> Atoms:
    """One unlabelled cell: fcc supercell of ≤ ``max_atoms`` (≥ 4), 1-3 elements, optional vacancies."""
    repeats = [r for r in REPEATS if 4 * np.prod(r) <= max_atoms]
    atoms = bulk("Cu", "fcc", a=1.0, cubic=True).repeat(repeats[rng.integers(len(repeats))])
    species = rng.choice(ELEMENTS, size=int(rng.integers(1, 4)), replace=False)
    atoms.set_chemical_symbols(rng.choice(species, size=len(atoms), p=rng.dirichlet(np.ones(len(species)))).tolist())
    atoms.set_cell(atoms.cell[:] * np.mean([LATTICE_CONSTANT[s] for s in atoms.get_chemical_symbols()]),
                   scale_atoms=True)
    if vacancies and len(atoms) >= 8 and rng.random() < 0.25:
        del atoms[rng.choice(len(atoms), size=int(rng.integers(1, 1 + max(1, len(atoms) // 16))), replace=False)]
    eps = rng.uniform(-strain, strain, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.rattle(stdev=rng.uniform(*rattle), seed=int(rng.integers(2**31)))
    return atoms


def _label(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                                       stress=atoms.get_stress(voigt=True))
    return atoms


def _relax_emt(atoms: Atoms) -> Atoms:
    """EMT's own relaxation of ``atoms`` (positions only), with the start kept in ``arrays``."""
    relaxed = atoms.copy()
    relaxed.arrays["start_positions"] = atoms.positions.copy()
    relaxed.calc = EMT()
    optimizer = FIRE(relaxed, logfile=None)
    converged = optimizer.run(fmax=1e-3, steps=3000)
    relaxed.info.update(relaxed_energy=relaxed.get_potential_energy(), emt_steps=optimizer.nsteps,
                        emt_converged=bool(converged))
    relaxed.calc = None
    return relaxed


def _map(function, items: list[Atoms], workers: int) -> list[Atoms]:
    if workers <= 1 or len(items) < 64:
        return [function(atoms) for atoms in items]
    with get_context("spawn").Pool(workers) as pool:
        return pool.map(function, items, chunksize=max(1, len(items) // (8 * workers)))


def make_crystals(n_structures: int, seed: int = 0, max_atoms: int = 128, workers: int = 1) -> list[Atoms]:
    """``n_structures`` labelled cells (energy, forces, stress) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return _map(_label, [random_crystal(rng, max_atoms) for _ in range(n_structures)], workers)


def make_relaxations(n_structures: int, seed: int = 1, max_atoms: int = 32, workers: int = 1) -> list[Atoms]:
    """Rattled starts (no vacancy, no strain, rattle 0.1-0.2 Å) and EMT's relaxed end points: each
    returned structure holds the relaxed positions, ``arrays["start_positions"]`` and
    ``info["relaxed_energy"]`` (eV), ``info["emt_steps"]``."""
    rng = np.random.default_rng(seed)
    starts = [random_crystal(rng, max_atoms, vacancies=False, strain=0.0, rattle=(0.1, 0.2)) for _ in range(n_structures)]
    return _map(_relax_emt, starts, workers)


def ensure_crystal_dataset(path: str | os.PathLike, n_structures: int = 5000, seed: int = 0, max_atoms: int = 128,
                           workers: int | None = None) -> str:
    """The crystal set at ``path``, written there first if missing (see `write_once`)."""
    workers = min(16, os.cpu_count() or 1) if workers is None else workers
    return write_once(path, lambda **p: make_crystals(**p, workers=workers), "crystals",
                      n_structures=n_structures, seed=seed, max_atoms=max_atoms)
