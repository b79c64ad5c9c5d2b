"""The device neighbour list with a Verlet skin: the exact pairs at every step, rebuilt only when needed."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlip.data.graph import neighbour_list
from mlip.data.verlet import VerletList


def _pairs(edge_index, shifts) -> set:
    return {(int(j), int(i), *map(int, s)) for (j, i), s in zip(np.asarray(edge_index).T, np.asarray(shifts).round())}


def _call(verlet: VerletList, atoms):
    positions = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell = torch.as_tensor(atoms.cell[:], dtype=torch.float64)
    return verlet(positions, cell, atoms.positions, atoms.cell[:], atoms.pbc)


@pytest.mark.parametrize("atoms", [bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), molecule("CH3CH2OH")],
                         ids=["periodic", "molecule"])
def test_the_pairs_equal_a_fresh_list_at_every_step_and_rebuilds_follow_the_skin(atoms, rng):
    atoms = atoms.copy()
    cutoff, skin = 3.0, 0.6
    verlet = VerletList(cutoff, skin)
    for step in range(40):
        edge_index, shifts, lengths = _call(verlet, atoms)
        expected_index, expected_shifts = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
        assert _pairs(edge_index, shifts) == _pairs(expected_index, expected_shifts), step
        vectors = atoms.positions[edge_index[0]] - atoms.positions[edge_index[1]] + shifts.numpy() @ atoms.cell[:]
        assert np.allclose(lengths.numpy(), np.linalg.norm(vectors, axis=1), atol=1e-12)
        atoms.positions += 0.03 * rng.standard_normal(atoms.positions.shape)  # ~0.05 Å per step per atom
    # each atom moves ~0.05 Å a step: a rebuild every few steps, far fewer than 40
    assert 2 <= verlet.builds <= 20


def test_a_new_cell_or_a_jump_rebuilds_and_no_skin_rebuilds_every_move():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    verlet = VerletList(3.0, 1.0)
    _call(verlet, atoms)
    _call(verlet, atoms)
    assert verlet.builds == 1
    atoms.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
    _call(verlet, atoms)
    assert verlet.builds == 2
    atoms.positions[0] += atoms.cell[0]  # a wrapped atom: same structure, a jump of one lattice vector
    edge_index, shifts, _ = _call(verlet, atoms)
    assert verlet.builds == 3
    expected = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, 3.0)
    assert _pairs(edge_index, shifts) == _pairs(*expected)
    fresh = VerletList(3.0, 0.0)
    for _ in range(3):
        atoms.positions[1] += 1e-3
        _call(fresh, atoms)
    assert fresh.builds == 3
    with pytest.raises(ValueError, match="skin"):
        VerletList(3.0, -0.1)
