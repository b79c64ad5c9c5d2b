"""Statistics of a training set that a model is built with and stores.

- E0s: per-element reference energies (eV), by least squares on the training
  energies or given as isolated-atom energies;
- avg_num_neighbors: mean number of edges per atom within the cutoff;
- shift: mean per-atom energy left after E0s (eV/atom);
- scale: RMS of the force components (eV/Å), the natural energy scale of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as SYMBOL_TO_Z
from ase.data import chemical_symbols

from mlip.data.graph import AtomicGraph
from mlip.data.structure import DataError, Structure


@dataclass
class DatasetStatistics:
    elements: list[int]
    e0s: list[float]
    avg_num_neighbors: float
    shift: float
    scale: float

    def to_dict(self) -> dict:
        return asdict(self)


def _composition_matrix(structures: Sequence[Structure], elements: Sequence[int]) -> np.ndarray:
    column = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(structures), len(elements)))
    for row, s in enumerate(structures):
        for z, c in zip(*np.unique(s.atomic_numbers, return_counts=True)):
            counts[row, column[int(z)]] = c
    return counts


def fit_e0s(structures: Sequence[Structure], elements: Sequence[int]) -> np.ndarray:
    """Least-squares E0s: minimise Σ_s (E_s - Σ_z n_{s,z} E0_z)² over labelled structures (eV)."""
    labelled = [s for s in structures if s.energy is not None]
    if not labelled:
        raise DataError("cannot fit E0s: no training structure has an energy label")
    counts = _composition_matrix(labelled, elements)
    energies = np.array([s.energy for s in labelled])
    e0s, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return e0s


def _given_e0s(e0s: Mapping | str | Path, elements: Sequence[int]) -> np.ndarray:
    if isinstance(e0s, (str, Path)):
        from mlip.data.readers.extxyz import read_extxyz

        table = {}
        for s in read_extxyz(e0s):
            if s.n_atoms != 1 or s.energy is None:
                raise DataError(f"{s.source}: an isolated-atom E0 file must hold single atoms with energies")
            table[int(s.atomic_numbers[0])] = s.energy
        where = str(e0s)
    else:
        table = {(SYMBOL_TO_Z[k] if isinstance(k, str) else int(k)): float(v) for k, v in e0s.items()}
        where = "the e0s given in the config"
    missing = [chemical_symbols[z] for z in elements if z not in table]
    if missing:
        raise DataError(f"{where}: no isolated-atom energy for element(s) {', '.join(missing)}")
    return np.array([table[z] for z in elements])


def compute_statistics(
    structures: Sequence[Structure],
    graphs: Sequence[AtomicGraph],
    e0s: str | Mapping | Path = "least_squares",
    elements: Sequence[int] | None = None,
) -> DatasetStatistics:
    """Statistics of the training set.

    Args:
        structures: the training structures.
        graphs: their graphs (for neighbour counts), in the same order.
        e0s: ``"least_squares"``, a mapping element (symbol or Z) -> eV, or the path
            of an extxyz file of isolated atoms.
        elements: atomic numbers the model knows; default: those in ``structures``.
    """
    if elements is None:
        elements = sorted({int(z) for s in structures for z in np.unique(s.atomic_numbers)})
    elements = [int(z) for z in elements]
    e0_values = fit_e0s(structures, elements) if e0s == "least_squares" else _given_e0s(e0s, elements)

    column = {z: k for k, z in enumerate(elements)}
    residuals = []
    for s in structures:
        if s.energy is not None:
            reference = sum(e0_values[column[int(z)]] for z in s.atomic_numbers)
            residuals.append((s.energy - reference) / s.n_atoms)
    shift = float(np.mean(residuals)) if residuals else 0.0

    force_components = [s.forces.ravel() for s in structures if s.forces is not None]
    if force_components:
        scale = float(np.sqrt(np.mean(np.concatenate(force_components) ** 2)))
    else:
        scale = float(np.std(residuals)) if residuals else 1.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0

    n_edges = sum(int(g.edge_index.shape[1]) for g in graphs)
    n_atoms = sum(int(g.num_nodes) for g in graphs)
    return DatasetStatistics(
        elements=elements,
        e0s=[float(e) for e in e0_values],
        avg_num_neighbors=n_edges / max(n_atoms, 1),
        shift=shift,
        scale=scale,
    )
