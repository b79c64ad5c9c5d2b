"""Symmetries and derivatives of a MACE `Potential` (float64)."""

import numpy as np
import pytest
import torch
from e3nn import o3

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.potential import UnknownElementError
from tests.conftest import FOUNDATION_PARTS, MH1_PARTS, make_tiny_potential, random_alloy, random_cluster

REL = 1e-10


def predict(potential, atoms, stress=None):
    stress = atoms.pbc.all() if stress is None else stress
    graph = structure_to_graph(structure_from_atoms(atoms, "test"), potential.r_max)
    out = potential(graph, compute_forces=True, compute_stress=bool(stress))
    return {k: v.detach().numpy() for k, v in out.items()}


def assert_rel(a, b, what, tol=REL):
    err = np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300)
    assert err < tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


@pytest.fixture(params=["nu2", "nu3", "foundation", "mh1"])
def potential(request):
    if request.param == "foundation":  # density blocks, Agnesi transform, ZBL inside scale and shift
        return make_tiny_potential(correlation=2, **FOUNDATION_PARTS)
    if request.param == "mh1":  # non-linear blocks; β moved off its initial 0 so the density acts
        potential = make_tiny_potential(correlation=2, **MH1_PARTS)
        with torch.no_grad():
            for block in potential.model.interactions:
                block.beta.fill_(0.7)
        return potential
    return make_tiny_potential(correlation=int(request.param[-1]))


def test_energy_invariant_forces_stress_equivariant_under_rotations(potential, rng):
    atoms = random_alloy(rng)
    ref = predict(potential, atoms)
    for R in (o3.rand_matrix().numpy(), -o3.rand_matrix().numpy()):
        rotated = atoms.copy()
        rotated.set_cell(atoms.cell[:] @ R.T, scale_atoms=False)
        rotated.positions = atoms.positions @ R.T
        out = predict(potential, rotated)
        assert_rel(out["energy"], ref["energy"], "energy")
        assert_rel(out["forces"], ref["forces"] @ R.T, "forces")
        assert_rel(out["stress"][0], R @ ref["stress"][0] @ R.T, "stress")


def test_translation_permutation_and_image_shifts_leave_predictions_unchanged(potential, rng):
    from tests.models.derivatives import assert_translation_and_permutation_invariant  # it imports this module

    atoms = random_alloy(rng)
    ref = assert_translation_and_permutation_invariant(potential, atoms, rng)

    shifted = atoms.copy()
    shifted.positions[1] += atoms.cell[0] - 2 * atoms.cell[2]
    shifted.positions[3] -= atoms.cell[1]
    out = predict(potential, shifted)
    assert_rel(out["energy"], ref["energy"], "image-shift energy")
    assert_rel(out["forces"], ref["forces"], "image-shift forces")
    assert_rel(out["stress"], ref["stress"], "image-shift stress")


def test_forces_match_central_finite_differences(potential, rng):
    for atoms in (random_alloy(rng), random_cluster(rng)):
        forces = predict(potential, atoms, stress=False)["forces"]
        h = 1e-5
        for atom, axis in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            fd = -(predict(potential, plus, False)["energy"][0] - predict(potential, minus, False)["energy"][0]) / (2 * h)
            assert forces[atom, axis] == pytest.approx(fd, rel=1e-6, abs=1e-8), f"atom {atom} axis {axis}"


def test_stress_matches_strain_finite_differences(potential, rng):
    atoms = random_alloy(rng)
    stress = predict(potential, atoms)["stress"][0]
    volume, h = atoms.get_volume(), 1e-6
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        eps = np.zeros((3, 3))
        eps[i, j] += h / 2
        eps[j, i] += h / 2
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] @ (np.eye(3) + sign * eps), scale_atoms=True)
            energies.append(predict(potential, strained, False)["energy"][0])
        fd = (energies[0] - energies[1]) / (2 * h) / volume
        assert stress[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-9), f"stress[{i},{j}]"


def test_energy_is_extensive_in_supercells(potential, rng):
    atoms = random_alloy(rng)
    cell = predict(potential, atoms)
    supercell = predict(potential, atoms.repeat((2, 2, 2)))
    assert_rel(supercell["energy"], 8 * cell["energy"], "supercell energy")
    assert_rel(supercell["stress"], cell["stress"], "supercell stress")
    assert_rel(supercell["forces"][: len(atoms)], cell["forces"], "supercell forces")


def test_per_atom_energies_sum_to_energy_and_isolated_atom_is_e0_plus_shift(tiny_potential, rng):
    cluster = random_cluster(rng)
    cluster.positions[0] += [30.0, 0, 0]  # no neighbours
    out = predict(tiny_potential, cluster)
    assert out["node_energy"].sum() == pytest.approx(out["energy"][0], rel=1e-12)
    assert np.allclose(out["forces"][0], 0.0)
    assert np.isfinite(out["energy"]).all()


def test_unknown_element_is_named(tiny_potential, rng):
    atoms = random_alloy(rng)
    atoms.numbers[0] = 26
    with pytest.raises(UnknownElementError, match=r"Fe \(Z=26\).*trained on: Ni, Cu, Au"):
        predict(tiny_potential, atoms)


def test_batched_predictions_equal_single_predictions(tiny_potential, rng):
    from torch_geometric.data import Batch

    systems = [random_alloy(rng), random_cluster(rng), random_alloy(rng, repeat=(2, 1, 1))]
    graphs = [structure_to_graph(structure_from_atoms(a, "t"), tiny_potential.r_max) for a in systems]
    batched = tiny_potential(Batch.from_data_list(graphs), compute_forces=True, compute_stress=True)
    offset = 0
    for k, atoms in enumerate(systems):
        single = predict(tiny_potential, atoms, stress=True)
        assert_rel(batched["energy"][k].item(), single["energy"][0], "batched energy")
        assert_rel(batched["forces"][offset : offset + len(atoms)].detach().numpy(), single["forces"], "batched forces")
        if atoms.pbc.all():
            assert_rel(batched["stress"][k].detach().numpy(), single["stress"][0], "batched stress")
        offset += len(atoms)


def _zbl_by_hand(z1: int, z2: int, r: float, p: int = 5) -> float:
    """ZBL of one pair (eV), from the published formula and ASE's covalent radii."""
    from ase.data import covalent_radii

    a = 0.4543 * 0.529 / (z1**0.3 + z2**0.3)
    phi = sum(c * np.exp(-d * r / a) for c, d in ((0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016)))
    u = r / (covalent_radii[z1] + covalent_radii[z2])
    envelope = (1 - (p + 1) * (p + 2) / 2 * u**p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)) * (u < 1)
    return 14.3996 * z1 * z2 / r * phi * envelope


@pytest.mark.parametrize("r", [0.6, 1.3, 2.0])
def test_zbl_repulsion_of_a_dimer_equals_the_formula_and_sits_inside_or_beside_the_scale(r):
    """Unscaled, ZBL adds its energy in eV beside the learned one; scaled (mace-torch's
    ScaleShiftMACE), it is multiplied by the potential's scale with it."""
    from ase import Atoms

    parts = {k: v for k, v in FOUNDATION_PARTS.items() if k != "pair_repulsion"}
    plain = make_tiny_potential(correlation=2, **parts)
    dimer = Atoms(numbers=[29, 79], positions=[[0.0, 0.0, 0.0], [r, 0.3 * r, 0.1]])
    distance = float(np.linalg.norm(dimer.positions[1]))
    expected = _zbl_by_hand(29, 79, distance)
    assert expected > 0 if distance < 2.68 else expected == 0
    added = {}
    for scaled in (False, True):
        with_zbl = make_tiny_potential(correlation=2, pair_repulsion={"kind": "zbl", "p": 5, "scaled": scaled}, **parts)
        with_zbl.load_state_dict(plain.state_dict(), strict=False)  # the same learned part
        added[scaled] = predict(with_zbl, dimer)["energy"][0] - predict(plain, dimer)["energy"][0]
    assert np.isclose(added[False], expected, rtol=1e-10, atol=1e-12)
    assert np.isclose(added[True], float(plain.scale) * expected, rtol=1e-10, atol=1e-12)
