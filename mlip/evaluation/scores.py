"""Error metrics of a model's predictions on one labelled dataset.

Units: energies in eV (total) and eV/atom, forces in eV/Å per Cartesian component,
stress in eV/Å³ per tensor component. Every mean runs over labelled entries only:
structures without an energy, atoms whose forces are masked (unlabelled, or fixed
atoms whose constraint forces are left out) and cells without a stress are skipped.

The OC20/OC22 S2EF metrics (Chanussot et al. 2021) are here too: energy MAE, force
MAE, force cosine (the mean over atoms of the cosine between predicted and reference
force vectors) and EFwT, the fraction of structures whose energy is within 0.02 eV
and whose every force component is within 0.03 eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

EFWT_ENERGY = 0.02  # eV
EFWT_FORCES = 0.03  # eV/Å


@dataclass
class Predictions:
    """Predictions and labels of one model on one dataset (NaN where a label is missing).

    ``natoms`` [G]; ``numbers`` [N]; ``energy``/``energy_ref`` [G] eV; ``forces``/
    ``forces_ref`` [N, 3] eV/Å with ``forces_mask`` [N]; ``stress``/``stress_ref``
    [G, 3, 3] eV/Å³; ``sources`` names each structure; ``e0`` [G] eV, the sum of the
    model's isolated-atom energies of each structure (None where unknown), so that plots can
    show the interaction energy per atom, (E - ΣE0)/N, instead of totals dominated by the
    reference energies.
    """

    sources: list[str]
    natoms: np.ndarray
    numbers: np.ndarray
    energy: np.ndarray
    energy_ref: np.ndarray
    forces: np.ndarray
    forces_ref: np.ndarray
    forces_mask: np.ndarray
    stress: np.ndarray
    stress_ref: np.ndarray
    e0: np.ndarray | None = None

    @property
    def structure_of_atom(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.natoms)), self.natoms)


def subset(p: Predictions, structures: np.ndarray) -> Predictions:
    """The predictions of the structures at ``structures`` (indices into ``p``'s), in that order."""
    structures = np.asarray(structures, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(p.natoms)])
    atoms = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in structures]) if len(structures) else \
        np.zeros(0, dtype=np.int64)
    return Predictions(
        sources=[p.sources[k] for k in structures] if p.sources else [], natoms=p.natoms[structures],
        numbers=p.numbers[atoms], energy=p.energy[structures], energy_ref=p.energy_ref[structures],
        forces=p.forces[atoms], forces_ref=p.forces_ref[atoms], forces_mask=p.forces_mask[atoms],
        stress=p.stress[structures], stress_ref=p.stress_ref[structures],
        e0=None if p.e0 is None else p.e0[structures])


def by_config_type(p: Predictions, config_types: list) -> dict[str, dict]:
    """`score` of each ``config_type`` (the structures' ``info["config_type"]``; None: unnamed),
    when the dataset names more than one or any; {} when none does."""
    names = ["-" if c is None else str(c) for c in config_types]
    if all(c is None for c in config_types):
        return {}
    out = {}
    for name in dict.fromkeys(names):
        metrics = score(subset(p, np.flatnonzero(np.array(names) == name)))
        metrics.pop("per_element", None)
        out[name] = metrics
    return out


def _mae_rmse(errors: np.ndarray) -> tuple[float, float]:
    if errors.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(errors).mean()), float(np.sqrt((errors**2).mean()))


def force_cosine(forces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-atom cosine between force vectors [N, 3] (atoms where either is zero give 0)."""
    norms = np.linalg.norm(forces, axis=1) * np.linalg.norm(reference, axis=1)
    dots = (forces * reference).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def score(p: Predictions) -> dict:
    """All metrics of ``p``: flat floats, plus ``per_element`` force errors."""
    out: dict = {"structures": len(p.natoms), "atoms": int(p.natoms.sum())}
    labelled = np.isfinite(p.energy_ref)
    if labelled.any():
        total = p.energy[labelled] - p.energy_ref[labelled]
        out["energy_mae"], out["energy_rmse"] = _mae_rmse(total)
        out["energy_per_atom_mae"], out["energy_per_atom_rmse"] = _mae_rmse(total / p.natoms[labelled])
    if p.forces_mask.any():
        errors = p.forces[p.forces_mask] - p.forces_ref[p.forces_mask]
        out["forces_mae"], out["forces_rmse"] = _mae_rmse(errors)
        out["force_cosine"] = float(force_cosine(p.forces[p.forces_mask], p.forces_ref[p.forces_mask]).mean())
        per_element = {}
        for z in np.unique(p.numbers[p.forces_mask]):
            rows = p.forces_mask & (p.numbers == z)
            mae, rmse = _mae_rmse(p.forces[rows] - p.forces_ref[rows])
            per_element[chemical_symbols[int(z)]] = {"forces_mae": mae, "forces_rmse": rmse, "atoms": int(rows.sum())}
        out["per_element"] = per_element
    has_stress = np.isfinite(p.stress_ref).all(axis=(1, 2))
    if has_stress.any():
        out["stress_mae"], out["stress_rmse"] = _mae_rmse(p.stress[has_stress] - p.stress_ref[has_stress])
    if labelled.any() and p.forces_mask.any():
        worst = np.zeros(len(p.natoms))
        component = np.abs(p.forces - p.forces_ref).max(axis=1) * p.forces_mask
        np.maximum.at(worst, p.structure_of_atom, component)
        within = labelled & (np.abs(np.nan_to_num(p.energy - p.energy_ref, nan=np.inf)) < EFWT_ENERGY) & (worst < EFWT_FORCES)
        out["efwt"] = float(within[labelled].mean())
    return out
