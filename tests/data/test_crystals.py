import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlip.data.crystals import ELEMENTS, ensure_crystal_dataset, make_crystals, make_relaxations


def test_crystals_are_labelled_fcc_cells_of_the_emt_elements():
    structures = make_crystals(30, seed=3)
    assert all(4 <= len(a) <= 128 and a.pbc.all() for a in structures)
    assert set().union(*(a.get_chemical_symbols() for a in structures)) <= set(ELEMENTS)
    assert len({len(set(a.get_chemical_symbols())) for a in structures}) > 1  # one to three elements
    atoms = structures[5]
    labelled = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    atoms = atoms.copy()
    atoms.calc = EMT()
    for got, want in zip(labelled, (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())):
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert [len(a) for a in make_crystals(30, seed=3)] == [len(a) for a in structures]  # seeded


def test_relaxations_hold_emts_own_minimum_and_the_start():
    (relaxed,) = make_relaxations(1, seed=4, max_atoms=8)
    assert relaxed.info["emt_converged"] and relaxed.info["emt_steps"] > 0
    assert np.abs(relaxed.arrays["start_positions"] - relaxed.positions).max() > 0.05
    relaxed.calc = EMT()
    assert np.abs(relaxed.get_forces()).max() < 1e-3
    assert relaxed.get_potential_energy() == pytest.approx(relaxed.info["relaxed_energy"])


def test_a_crystal_file_made_with_other_parameters_is_refused(tmp_path):
    path = tmp_path / "c.xyz"
    assert ensure_crystal_dataset(path, n_structures=3, seed=1, workers=1) == str(path)
    ensure_crystal_dataset(path, n_structures=3, seed=1, workers=1)  # found, not rewritten
    with pytest.raises(ValueError, match="was made with n_structures=3, seed=1, max_atoms=128, not the n_structures=5, .* delete it"):
        ensure_crystal_dataset(path, n_structures=5, seed=1, workers=1)
