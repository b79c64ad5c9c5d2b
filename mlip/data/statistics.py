"""Statistics of a training set that a model is built with and stores.

- E0s: per-element reference energies (eV), by least squares on the training
  energies, given as isolated-atom energies, or zero (for energies that are already
  referenced, such as OC20 adsorption energies);
- avg_num_neighbors: mean number of edges per atom within the cutoff;
- shift: mean per-atom energy left after E0s (eV/atom);
- scale: RMS of the force components (eV/Å), the natural energy scale of the model.

Everything is computed from a few per-structure arrays (`TrainingSetSummary`), so
the same code serves structures in memory and a preprocessed store.
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


N_Z = 119  # atomic numbers 0..118


@dataclass
class TrainingSetSummary:
    """Additive sufficient statistics of a training set (two summaries add up to their union).

    With A the [S, 119] composition matrix, E the energies, N the atom counts and
    f = A / N the composition fractions of the energy-labelled structures:

    Attributes:
        atom_counts: [119] atoms per atomic number (all structures).
        gram, moment: AᵀA [119, 119] and AᵀE [119], for least-squares E0s.
        n_labelled: structures with an energy label.
        sum_e, sum_e2: Σ E/N and Σ (E/N)² (eV/atom).
        sum_f, sum_ef, sum_ff: Σ f, Σ (E/N) f and Σ f fᵀ, for the residual mean and spread.
        force_sq_sum / force_count: Σ of squared force components (eV²/Å²) and their number.
        n_edges / n_atoms: total edges at the cutoff and total atoms.
    """

    atom_counts: np.ndarray
    gram: np.ndarray
    moment: np.ndarray
    n_labelled: int
    sum_e: float
    sum_e2: float
    sum_f: np.ndarray
    sum_ef: np.ndarray
    sum_ff: np.ndarray
    force_sq_sum: float
    force_count: int
    n_edges: int
    n_atoms: int

    @classmethod
    def from_arrays(
        cls,
        atomic_numbers: np.ndarray,
        atom_offsets: np.ndarray,
        energies: np.ndarray,
        force_sq_sums: np.ndarray,
        force_counts: np.ndarray,
        n_edges: np.ndarray,
    ) -> TrainingSetSummary:
        """Summarise S structures stored contiguously.

        Args:
            atomic_numbers: [A] of all structures; ``atom_offsets`` [S + 1] delimit them.
            energies: [S] eV, NaN where unlabelled.
            force_sq_sums / force_counts: [S] Σ F² per structure and its number of components (0: no forces).
            n_edges: [S] edges per structure at the cutoff.
        """
        sizes = np.diff(atom_offsets)
        owner = np.repeat(np.arange(len(sizes)), sizes)
        composition = np.zeros((len(sizes), N_Z), dtype=np.float64)
        np.add.at(composition, (owner, np.asarray(atomic_numbers, dtype=np.int64)), 1.0)
        labelled = np.isfinite(energies)
        a, e, n = composition[labelled], energies[labelled], sizes[labelled].astype(np.float64)
        f, e_per_atom = a / n[:, None], e / n
        return cls(
            atom_counts=composition.sum(axis=0).astype(np.int64),
            gram=a.T @ a,
            moment=a.T @ e,
            n_labelled=int(labelled.sum()),
            sum_e=float(e_per_atom.sum()),
            sum_e2=float((e_per_atom**2).sum()),
            sum_f=f.sum(axis=0),
            sum_ef=f.T @ e_per_atom,
            sum_ff=f.T @ f,
            force_sq_sum=float(np.sum(force_sq_sums)),
            force_count=int(np.sum(force_counts)),
            n_edges=int(np.sum(n_edges)),
            n_atoms=int(sizes.sum()),
        )

    @classmethod
    def from_structures(cls, structures: Sequence[Structure], graphs: Sequence[AtomicGraph]) -> TrainingSetSummary:
        return cls.from_arrays(
            np.concatenate([s.atomic_numbers for s in structures]),
            np.concatenate([[0], np.cumsum([s.n_atoms for s in structures])]),
            np.array([np.nan if s.energy is None else s.energy for s in structures], dtype=np.float64),
            np.array([0.0 if s.forces is None else float(np.sum(s.forces**2)) for s in structures]),
            np.array([0 if s.forces is None else s.forces.size for s in structures]),
            np.array([int(g.edge_index.shape[1]) for g in graphs]),
        )

    def __add__(self, other: TrainingSetSummary) -> TrainingSetSummary:
        return TrainingSetSummary(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    def to_dict(self) -> dict:
        """JSON-ready lists and numbers."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainingSetSummary:
        arrays = {"atom_counts", "gram", "moment", "sum_f", "sum_ef", "sum_ff"}
        return cls(**{k: (np.asarray(v) if k in arrays else v) for k, v in data.items()})


def fit_e0s(gram: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """Least-squares E0s (eV) from the normal equations AᵀA e0 = AᵀE of the labelled structures.

    Minimises Σ_s (E_s - Σ_z n_{s,z} E0_z)²; the minimum-norm solution where the
    compositions do not separate the elements.
    """
    e0s, *_ = np.linalg.lstsq(gram, moment, rcond=None)
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


def statistics_from_summary(
    summary: TrainingSetSummary, e0s: str | Mapping | Path = "least_squares", elements: Sequence[int] | None = None
) -> DatasetStatistics:
    """Statistics of the training set summarised by ``summary``.

    Args:
        e0s: ``"least_squares"``, ``"zero"``, a mapping element (symbol or Z) -> eV, or
            the path of an extxyz file of isolated atoms.
        elements: atomic numbers the model knows; default: those in the training set.
    """
    present = np.flatnonzero(summary.atom_counts)
    elements = [int(z) for z in (present if elements is None else elements)]
    unknown = sorted(set(present.tolist()) - set(elements))
    if unknown:
        raise DataError(f"training set holds element(s) {[chemical_symbols[z] for z in unknown]} not in elements={elements}")
    if isinstance(e0s, str) and e0s == "least_squares":
        if summary.n_labelled == 0:
            raise DataError("cannot fit E0s: no training structure has an energy label")
        e0_values = fit_e0s(summary.gram[np.ix_(elements, elements)], summary.moment[elements])
    elif isinstance(e0s, str) and e0s == "zero":
        e0_values = np.zeros(len(elements))
    else:
        e0_values = _given_e0s(e0s, elements)

    # residual per atom r = E/N - f·e0: its mean is the shift, its spread the fallback scale
    reference = np.zeros(N_Z)
    reference[elements] = e0_values
    count = max(summary.n_labelled, 1)
    mean_residual = (summary.sum_e - summary.sum_f @ reference) / count
    mean_square = (summary.sum_e2 - 2 * summary.sum_ef @ reference + reference @ summary.sum_ff @ reference) / count
    shift = float(mean_residual) if summary.n_labelled else 0.0
    if summary.force_count:
        scale = float(np.sqrt(summary.force_sq_sum / summary.force_count))
    else:
        scale = float(np.sqrt(max(mean_square - mean_residual**2, 0.0))) if summary.n_labelled else 1.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return DatasetStatistics(
        elements=elements,
        e0s=[float(e) for e in e0_values],
        avg_num_neighbors=summary.n_edges / max(summary.n_atoms, 1),
        shift=shift,
        scale=scale,
    )


def compute_statistics(
    structures: Sequence[Structure],
    graphs: Sequence[AtomicGraph],
    e0s: str | Mapping | Path = "least_squares",
    elements: Sequence[int] | None = None,
) -> DatasetStatistics:
    """Statistics of training structures held in memory (``graphs`` in the same order, for edge counts)."""
    return statistics_from_summary(TrainingSetSummary.from_structures(structures, graphs), e0s, elements)
