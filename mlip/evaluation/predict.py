"""Running a model over labelled structures, and writing its predictions back as extxyz."""

from __future__ import annotations

import io
from collections.abc import Sequence

import ase.io
import numpy as np

from mlip.data.checks import MIN_DISTANCE, check_finite_prediction
from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import atoms_from_structure
from mlip.data.structure import Structure
from mlip.evaluation.scores import Predictions
from mlip.models.potential import Potential, UnknownElementError


def predict(potential: Potential, structures: Sequence[Structure], min_distance: float = MIN_DISTANCE) -> Predictions:
    """Energy, forces and (periodic cells) stress of every structure, beside its labels.

    A structure with atoms closer than ``min_distance`` Å, or on which the model predicts a
    NaN or inf, raises `DataError` naming it: no such number reaches a metric.
    """
    device = potential.e0s.device
    energy, forces, stress, masks, e0 = [], [], [], [], []
    for structure in structures:
        graph = structure_to_graph(structure, potential.r_max, min_distance=min_distance).to(device)
        periodic = bool(structure.pbc.all())
        try:
            out = potential(graph, compute_forces=True, compute_stress=periodic)
        except UnknownElementError as exc:  # which structure (the caller adds which model)
            raise UnknownElementError(f"{structure.source}: {exc}") from None
        check_finite_prediction(structure.source, out, ["energy", "forces"] + (["stress"] if periodic else []))
        energy.append(float(out["energy"].item()))
        e0.append(float(out["e0_energy"].item()))
        forces.append(out["forces"].detach().cpu().double().numpy())
        stress.append(out["stress"][0].detach().cpu().double().numpy() if periodic else np.full((3, 3), np.nan))
        masks.append(graph.forces_mask.cpu().numpy())
    nan_forces = [np.full((s.n_atoms, 3), np.nan) for s in structures]
    return Predictions(
        sources=[s.source for s in structures],
        natoms=np.array([s.n_atoms for s in structures]),
        numbers=np.concatenate([s.atomic_numbers for s in structures]),
        energy=np.array(energy),
        energy_ref=np.array([np.nan if s.energy is None else s.energy for s in structures]),
        forces=np.concatenate(forces),
        forces_ref=np.concatenate([f if s.forces is None else s.forces for s, f in zip(structures, nan_forces)]),
        forces_mask=np.concatenate(masks).astype(bool),
        stress=np.stack(stress),
        stress_ref=np.stack([np.full((3, 3), np.nan) if s.stress is None or not s.pbc.all() else s.stress
                             for s in structures]),
        e0=np.array(e0),
    )


def predictions_extxyz(structures: Sequence[Structure], p: Predictions) -> bytes:
    """extxyz of the structures with their labels as ``REF_energy``/``REF_forces``/``REF_stress``
    and the model's ``MLIP_energy`` (eV), ``MLIP_forces`` (eV/Å) and ``MLIP_stress`` (eV/Å³,
    3x3 flattened) beside them."""
    text = io.StringIO()
    start = 0
    for k, structure in enumerate(structures):
        atoms = atoms_from_structure(structure)
        atoms.set_constraint()
        if structure.energy is not None:
            atoms.info["REF_energy"] = structure.energy
        if structure.forces is not None:
            atoms.arrays["REF_forces"] = structure.forces
        if structure.stress is not None:
            atoms.info["REF_stress"] = structure.stress.reshape(9)
        atoms.info["MLIP_energy"] = float(p.energy[k])
        atoms.arrays["MLIP_forces"] = p.forces[start : start + structure.n_atoms]
        if np.isfinite(p.stress[k]).all():
            atoms.info["MLIP_stress"] = p.stress[k].reshape(9)
        start += structure.n_atoms
        ase.io.write(text, atoms, format="extxyz")
    return text.getvalue().encode()
