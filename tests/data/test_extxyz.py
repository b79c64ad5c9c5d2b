import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.readers.extxyz import read_extxyz
from mlip.data.structure import DataError
from tests.conftest import random_alloy


def test_reads_labels_under_custom_keys(tmp_path, rng):
    atoms = random_alloy(rng)
    forces = rng.standard_normal((len(atoms), 3))
    stress = rng.standard_normal(6)
    atoms.info["REF_energy"] = -12.5
    atoms.arrays["REF_forces"] = forces
    atoms.info["REF_stress"] = stress
    path = tmp_path / "custom.xyz"
    ase.io.write(path, [atoms, atoms], format="extxyz")
    structures = read_extxyz(path, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress")
    assert len(structures) == 2
    s = structures[1]
    assert s.source == f"{path}#1"
    assert s.energy == -12.5
    assert np.allclose(s.forces, forces)
    assert np.allclose(s.stress[0, 1], stress[5]) and np.allclose(s.stress[1, 2], stress[3])


def test_reads_calculator_labels_and_virial(tmp_path, rng):
    atoms = random_alloy(rng)
    forces = rng.standard_normal((len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, energy=3.0, forces=forces)
    virial = np.diag([1.0, 2.0, 3.0])
    atoms.info["virial"] = virial
    path = tmp_path / "calc.xyz"
    ase.io.write(path, atoms, format="extxyz")
    (s,) = read_extxyz(path)
    assert s.energy == 3.0 and np.allclose(s.forces, forces)
    assert np.allclose(s.stress, -virial / atoms.get_volume())


def test_unlabelled_frames_read_as_unlabelled(tmp_path, rng):
    path = tmp_path / "plain.xyz"
    ase.io.write(path, random_alloy(rng), format="extxyz")
    (s,) = read_extxyz(path)
    assert s.energy is None and s.forces is None and s.stress is None


def test_malformed_file_names_file_and_record(tmp_path, rng):
    path = tmp_path / "broken.xyz"
    ase.io.write(path, [random_alloy(rng), random_alloy(rng)], format="extxyz")
    with open(path, "a") as f:
        f.write("3\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu 1 1\n")
    with pytest.raises(DataError, match=r"broken.xyz#2: line \d+: atom row 1 has 3 columns, expected 4"):
        read_extxyz(path)


def test_nan_in_file_names_the_record(tmp_path, rng):
    atoms = random_alloy(rng)
    atoms.positions[2, 1] = np.nan
    path = tmp_path / "nan.xyz"
    ase.io.write(path, [random_alloy(rng), atoms], format="extxyz")
    with pytest.raises(DataError, match=r"nan.xyz#1: non-finite .* atom 2"):
        read_extxyz(path)


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such extxyz file"):
        read_extxyz(tmp_path / "absent.xyz")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match="holds no structures"):
        read_extxyz(tmp_path / "empty.xyz")


def test_3bpa_sample_reads_documented_values(dataset_dir):
    structures = read_extxyz(dataset_dir / "3bpa" / "train_300K.xyz", stress_key=None, virial_key=None)
    assert len(structures) == 500
    first = structures[0]
    assert first.n_atoms == 27 and not first.pbc.any()
    assert first.energy == pytest.approx(-17660.461737861464, abs=1e-9)
    assert np.allclose(first.forces[0], [0.17092934, 0.13274200, 0.79555789], atol=1e-7)
