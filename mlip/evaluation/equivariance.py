"""How far a model is from rotation equivariance, measured on real structures.

For each structure and each of ``num_rotations`` random rotations R (SO(3), Haar
measure, seeded), the structure is rotated (positions and cell) and predicted again:

    energy error  |E(Rx) − E(x)| / N                     eV/atom
    forces error  max_i ‖F_i(Rx) − R F_i(x)‖              eV/Å
    stress error  max_ab |σ(Rx) − R σ(x) Rᵀ|_ab           eV/Å³ (cells periodic in 3D)

An exactly equivariant model gives round-off; approximate ones (TDN below full rank)
show their error here, beside their accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.models.potential import Potential


@dataclass
class EquivarianceReport:
    """Per (structure, rotation) errors; `summary` gives mean and max of each."""

    energy: list[float] = field(default_factory=list)
    forces: list[float] = field(default_factory=list)
    stress: list[float] = field(default_factory=list)
    structures: int = 0

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"structures": self.structures}
        for name, unit in (("energy", "eV/atom"), ("forces", "eV/A"), ("stress", "eV/A^3")):
            values = getattr(self, name)
            if values:
                out[f"{name}_mean_{unit}"] = float(np.mean(values))
                out[f"{name}_max_{unit}"] = float(np.max(values))
        return out


def _rotated(structure: Structure, rotation: np.ndarray) -> Structure:
    return Structure(
        atomic_numbers=structure.atomic_numbers,
        positions=structure.positions @ rotation.T,
        cell=structure.cell @ rotation.T,
        pbc=structure.pbc,
        source=f"{structure.source} (rotated)",
    )


def _predict(potential: Potential, structure: Structure, device, stress: bool) -> dict[str, np.ndarray]:
    graph = structure_to_graph(structure, potential.r_max).to(device)
    out = potential(graph, compute_forces=True, compute_stress=stress)
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def equivariance_audit(
    potential: Potential, structures: Iterable[Structure], num_rotations: int = 8, seed: int = 0,
    max_structures: int | None = None, progress: bool = False,
) -> EquivarianceReport:
    """Energy, force and stress equivariance errors of ``potential`` on ``structures``: at most
    ``max_structures`` of them, drawn at random (``seed``) where there are more (each costs
    ``num_rotations`` + 1 predictions); ``progress``: a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    device = potential.e0s.device
    rotations = Rotation.random(num_rotations, random_state=seed).as_matrix()
    report = EquivarianceReport()
    structures = list(structures)
    if max_structures is not None and len(structures) > max_structures:
        chosen = np.sort(np.random.default_rng(seed).choice(len(structures), max_structures, replace=False))
        structures = [structures[k] for k in chosen]
    for structure in tqdm(structures, desc="equivariance audit", unit="structure", disable=not progress):
        stress = bool(np.all(structure.pbc))
        reference = _predict(potential, structure, device, stress)
        n = len(structure.atomic_numbers)
        for rotation in rotations:
            out = _predict(potential, _rotated(structure, rotation), device, stress)
            report.energy.append(float(abs(out["energy"][0] - reference["energy"][0]) / n))
            report.forces.append(float(np.linalg.norm(out["forces"] - reference["forces"] @ rotation.T, axis=1).max()))
            if stress:
                expected = rotation @ reference["stress"][0] @ rotation.T
                report.stress.append(float(np.abs(out["stress"][0] - expected).max()))
        report.structures += 1
    return report
