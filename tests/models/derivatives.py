"""Checks shared by the model families' tests: finite-difference references for forces and stress
(central differences, float64), and invariance under translation and permutation."""

import numpy as np

from tests.models.test_mace_potential import assert_rel, predict


def force_pairs(potential, atoms, h: float = 1e-5):
    """(predicted force, -ΔE/Δx) for three (atom, axis) components of ``atoms``."""
    forces = predict(potential, atoms, stress=False)["forces"]
    pairs = []
    for atom, axis in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = -(predict(potential, plus, False)["energy"][0] - predict(potential, minus, False)["energy"][0]) / (2 * h)
        pairs.append((forces[atom, axis], fd))
    return pairs


def stress_pairs(potential, atoms, h: float = 1e-6):
    """(predicted stress, (1/V) ΔE/Δε) for the (0, 0) and (1, 2) components of a periodic ``atoms``."""
    stress, volume = predict(potential, atoms)["stress"][0], atoms.get_volume()
    pairs = []
    for i, j in [(0, 0), (1, 2)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += sign * h / 2
            eps[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(predict(potential, strained, False)["energy"][0])
        pairs.append((stress[i, j], (energies[0] - energies[1]) / (2 * h) / volume))
    return pairs


def assert_translation_and_permutation_invariant(potential, atoms, rng) -> dict:
    """Energy and forces unchanged by a rigid translation; permuted atoms permute the forces and
    node energies. Returns the predictions for ``atoms``."""
    ref = predict(potential, atoms)
    moved = atoms.copy()
    moved.positions += rng.normal(size=3) * 3.0
    out = predict(potential, moved)
    assert_rel(out["energy"], ref["energy"], "translation energy")
    assert_rel(out["forces"], ref["forces"], "translation forces")
    perm = rng.permutation(len(atoms))
    out = predict(potential, atoms[perm])
    assert_rel(out["energy"], ref["energy"], "permutation energy")
    assert_rel(out["forces"], ref["forces"][perm], "permutation forces")
    assert_rel(out["node_energy"], ref["node_energy"][perm], "permutation node energies")
    return ref
