import numpy as np
import pytest

from mlip.data.structure import DataError, Structure, stress_to_3x3, virial_to_stress


def _atoms(**kw):
    base = dict(atomic_numbers=[29, 29], positions=[[0, 0, 0], [1.5, 0, 0]], source="file.xyz#3")
    base.update(kw)
    return base


def test_nan_position_is_refused_naming_the_record():
    with pytest.raises(DataError, match=r"file.xyz#3.*atom 1"):
        Structure(**_atoms(positions=[[0, 0, 0], [np.nan, 0, 0]]))


def test_zero_volume_cell_with_pbc_is_refused():
    with pytest.raises(DataError, match=r"file.xyz#3.*zero-volume"):
        Structure(**_atoms(cell=np.zeros((3, 3)), pbc=True))
    with pytest.raises(DataError, match="degenerate"):
        Structure(**_atoms(cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True))


def test_slab_with_pbc_in_two_directions_needs_only_those_vectors():
    s = Structure(**_atoms(cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=[True, True, False]))
    assert not s.is_periodic


def test_unknown_atomic_number_is_refused():
    with pytest.raises(DataError, match="unknown element with atomic number 0"):
        Structure(**_atoms(atomic_numbers=[29, 0]))


def test_label_shapes_and_finiteness_are_checked():
    with pytest.raises(DataError, match=r"forces have shape \(3, 3\)"):
        Structure(**_atoms(forces=np.zeros((3, 3))))
    with pytest.raises(DataError, match="non-finite force on atom 0"):
        Structure(**_atoms(forces=[[np.inf, 0, 0], [0, 0, 0]]))
    with pytest.raises(DataError, match="energy is nan"):
        Structure(**_atoms(energy=float("nan")))


def test_voigt_stress_and_virial_conversion_by_hand():
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy
    full = stress_to_3x3(voigt)
    assert np.array_equal(full, [[1, 6, 5], [6, 2, 4], [5, 4, 3]])
    virial = np.diag([2.0, 4.0, 6.0])
    assert np.allclose(virial_to_stress(virial, volume=2.0), -np.diag([1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match="non-zero volume"):
        virial_to_stress(virial, volume=0.0)
