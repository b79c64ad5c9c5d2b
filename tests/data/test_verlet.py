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


def _batch(structures):
    positions = torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=torch.float64)
    cells = torch.as_tensor(np.stack([a.cell[:] for a in structures]), dtype=torch.float64)
    system_idx = torch.repeat_interleave(torch.arange(len(structures)), torch.tensor([len(a) for a in structures]))
    return positions, cells, system_idx


def _fresh_pairs(structures, cutoff) -> set:
    pairs, start = set(), 0
    for atoms in structures:
        edge_index, shifts = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
        pairs |= _pairs(edge_index + start, shifts)
        start += len(atoms)
    return pairs


def test_a_batched_list_is_exact_at_every_step_and_rebuilds_only_the_structures_that_moved(rng):
    from mlip.data.verlet import BatchedVerletList

    structures = [bulk("Cu", "fcc", a=3.6, cubic=True).repeat(r) for r in ((1, 1, 1), (2, 1, 1), (1, 2, 2))]
    structures.append(bulk("Cu", "fcc", a=3.6) * (2, 2, 2))  # a primitive, non-orthogonal cell
    cutoff, skin = 3.0, 0.6
    verlet = BatchedVerletList(cutoff, skin)
    steps = [0.0, 0.002, 0.004, 0.06]  # per-step displacement scale of each structure: the last one moves fast
    for step in range(30):
        positions, cells, system_idx = _batch(structures)
        edge_index, shifts = verlet(positions, cells, system_idx, True)
        assert _pairs(edge_index, shifts) == _fresh_pairs(structures, cutoff), step
        for atoms, scale in zip(structures, steps):
            atoms.positions += scale * rng.standard_normal(atoms.positions.shape)
    # all four built once; then the fast structure is rebuilt every few steps and the others never
    assert 4 + 3 <= verlet.builds <= 4 + 20
    fast_only = verlet.builds
    structures[0].set_cell(structures[0].cell[:] * 1.01, scale_atoms=True)  # one cell changes: one rebuild
    positions, cells, system_idx = _batch(structures)
    edge_index, shifts = verlet(positions, cells, system_idx, True)
    assert verlet.builds in (fast_only + 1, fast_only + 2)  # the fast one may be due as well
    assert _pairs(edge_index, shifts) == _fresh_pairs(structures, cutoff)
    before = verlet.builds
    edge_index, shifts = verlet(*_batch(structures[1:]), True)  # another batch: everything is rebuilt
    assert verlet.builds == before + 3
    assert _pairs(edge_index, shifts) == _fresh_pairs(structures[1:], cutoff)


def test_a_batch_of_molecules_needs_no_cell():
    from mlip.data.verlet import BatchedVerletList

    structures = [molecule("CH3CH2OH"), molecule("H2O"), molecule("C6H6")]
    for atoms in structures:
        atoms.cell = np.zeros((3, 3))
    verlet = BatchedVerletList(2.5, 0.5)
    edge_index, shifts = verlet(*_batch(structures), False)
    assert _pairs(edge_index, shifts) == _fresh_pairs(structures, 2.5)
    assert not shifts.any()


def test_atoms_wrapped_into_the_cell_rebuild_nothing_and_keep_the_pairs_exact(rng):
    """torch-sim wraps positions every step: a jump by a lattice vector is not a move."""
    from mlip.data.verlet import BatchedVerletList

    wide = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))  # 7.2 Å: wider than twice the skin
    wide.set_cell(wide.cell[:] @ np.array([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [0.0, 0.1, 1.0]]), scale_atoms=True)
    narrow = bulk("Cu", "fcc", a=3.6, cubic=True)  # 3.6 Å: narrower than twice the skin, a wrap rebuilds
    structures = [wide, narrow]
    verlet = BatchedVerletList(3.0, 2.0)
    builds = []
    for step in range(12):
        for atoms in structures:
            atoms.positions += 0.01 * rng.standard_normal(atoms.positions.shape)  # far less than skin / 2
            atoms.positions[0] += atoms.cell[step % 3] * (1 if step % 2 else -1)  # ... but one atom jumps a cell
            atoms.positions[1] += atoms.cell[0] - atoms.cell[2]
        positions, cells, system_idx = _batch(structures)
        edge_index, shifts = verlet(positions, cells, system_idx, True)
        assert _pairs(edge_index, shifts) == _fresh_pairs(structures, 3.0), step
        builds.append(verlet.builds)
    assert builds[-1] == 2 + 11  # the first build of both, then only the narrow cell, at every step
