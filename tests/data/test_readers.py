"""Every reader on files the tests write themselves, and on the shared real samples."""

import json
import os
import pickle

import ase.io
import numpy as np
import pytest
from ase.units import GPa

from mlip.data.readers import SkippedRecords, detect_format, iter_structures, read_structures
from mlip.data.readers import mptrj as mptrj_module
from mlip.data.readers.mptrj import vasp_kbar_to_ase_stress
from mlip.data.structure import DataError
from tests.conftest import random_alloy
from tests.data.formats import (
    emt_slabs,
    mptrj_frame,
    old_style_record,
    write_ase_db,
    write_aselmdb,
    write_mptrj,
    write_oc20_lmdb,
)


def _assert_same_as_ase(structures, frames, atol=1e-6):
    assert len(structures) == len(frames)
    for s, atoms in zip(structures, frames):
        assert np.array_equal(s.atomic_numbers, atoms.numbers)
        assert np.allclose(s.positions, atoms.positions, atol=atol)
        assert np.allclose(s.cell, atoms.cell[:], atol=atol)
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=atol)
        assert np.allclose(s.forces, atoms.get_forces(apply_constraint=False), atol=atol)
        assert np.array_equal(s.tags, atoms.get_tags())
        assert np.array_equal(s.fixed, atoms.get_tags() == 0)


@pytest.mark.parametrize("old_style", [False, True])
def test_oc20_lmdb_both_torch_geometric_layouts(tmp_path, old_style):
    frames = emt_slabs(4)
    path = tmp_path / "s2ef.lmdb"
    write_oc20_lmdb(path, frames, old_style=old_style)
    structures = read_structures(path)
    _assert_same_as_ase(structures, frames)
    assert structures[2].source == f"{path}#2" and structures[2].info == {"sid": 7, "fid": 2}
    assert structures[0].pbc.all()


def test_oc20_lmdb_folder_reads_every_file_in_order(tmp_path):
    frames = emt_slabs(5)
    folder = tmp_path / "train"
    folder.mkdir()
    write_oc20_lmdb(folder / "data.0000.lmdb", frames[:3])
    write_oc20_lmdb(folder / "data.0001.lmdb", frames[3:])
    assert detect_format(folder) == "oc20_lmdb"
    _assert_same_as_ase(read_structures(folder), frames)


def test_oc20_lmdb_refuses_unexpected_pickled_types(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.lmdb"
    write_oc20_lmdb(path, emt_slabs(2))
    import lmdb

    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", pickle.dumps(Exploit()))
    env.close()
    with pytest.raises(DataError, match=r"evil.lmdb#1: refusing to unpickle (posix|os|nt)\.system"):
        read_structures(path)
    assert not marker.exists()


def test_truncated_lmdb_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "cut.lmdb"
    write_oc20_lmdb(path, emt_slabs(6))
    data = path.read_bytes()
    used = max(i for i in range(0, len(data), 4096) if any(data[i : i + 4096]))
    path.write_bytes(data[: used // 2])
    with pytest.raises(DataError, match=r"cut.lmdb: LMDB file is truncated"):
        read_structures(path)


def test_oc20_record_missing_its_forces_is_named_or_skipped(tmp_path):
    path = tmp_path / "noforce.lmdb"
    frames = emt_slabs(3)
    write_oc20_lmdb(path, frames)
    import lmdb

    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        fields = {"pos": frames[1].positions, "cell": frames[1].cell[:], "atomic_numbers": frames[1].numbers, "y": 1.0}
        txn.put(b"1", old_style_record(fields))
    env.close()
    with pytest.raises(DataError, match=r"noforce.lmdb#1: record has no 'force' label"):
        read_structures(path)
    skipped = SkippedRecords()
    kept = read_structures(path, on_error="skip", skipped=skipped)
    assert len(kept) == 2 and skipped.count == 1 and "noforce.lmdb#1" in skipped.reasons[0]


def test_aselmdb_round_trip_keeps_tags_constraints_and_data(tmp_path):
    frames = emt_slabs(3)
    path = tmp_path / "slabs.aselmdb"
    write_aselmdb(path, frames)
    structures = read_structures(path)
    _assert_same_as_ase(structures, frames)
    assert structures[1].source == f"{path}#2" and structures[1].info["fid"] == 1


def test_ase_db_round_trip(tmp_path):
    frames = emt_slabs(3)
    path = tmp_path / "slabs.db"
    write_ase_db(path, frames)
    structures = read_structures(path)
    _assert_same_as_ase(structures, frames, atol=1e-12)
    assert structures[0].source == f"{path}#id=1"
    with pytest.raises(DataError, match="no such ASE database"):
        read_structures(tmp_path / "absent.db")


def test_generic_ase_fallback_reads_a_trajectory(tmp_path):
    frames = emt_slabs(2)
    path = tmp_path / "relax.traj"
    ase.io.write(path, frames)
    assert detect_format(path) == "ase"
    _assert_same_as_ase(read_structures(path), frames, atol=1e-12)


def test_mptrj_units_sign_energy_choice_and_streaming(tmp_path, rng, monkeypatch):
    from ase.calculators.emt import EMT

    crystals = []
    for _ in range(5):
        atoms = random_alloy(rng)
        atoms.calc = EMT()
        crystals.append(atoms)
    stresses = [a.get_stress(voigt=False) for a in crystals]
    materials = {"mp-1": [mptrj_frame(a, "mp-1", s) for a, s in zip(crystals[:3], stresses[:3])],
                 "mp-22": [mptrj_frame(a, "mp-22", s) for a, s in zip(crystals[3:], stresses[3:])]}
    path = tmp_path / "mptrj.json"
    write_mptrj(path, materials)
    monkeypatch.setattr(mptrj_module, "CHUNK", 97)  # force many partial reads of the stream
    structures = read_structures(path)
    assert [s.source.split("#")[1] for s in structures] == ["mp-1/mp-1-0", "mp-1/mp-1-1", "mp-1/mp-1-2", "mp-22/mp-22-0", "mp-22/mp-22-1"]
    for s, atoms, stress in zip(structures, crystals, stresses):
        assert s.energy == pytest.approx(atoms.get_potential_energy() - 0.5)  # corrected by default
        assert np.allclose(s.stress, stress, atol=1e-12)  # back in ASE's sign and eV/Å³
        assert np.allclose(s.positions, atoms.positions) and np.allclose(s.forces, atoms.get_forces())
    uncorrected = read_structures(path, energy="uncorrected")
    assert uncorrected[0].energy == pytest.approx(crystals[0].get_potential_energy())


def test_vasp_stress_conversion_by_hand():
    # 10 kBar of VASP stress (compressive, positive) is 1 GPa = 0.0062415 eV/Å³ of ASE stress, negative
    ase_stress = vasp_kbar_to_ase_stress(np.diag([10.0, 10.0, 10.0]))
    assert ase_stress[0, 0] == pytest.approx(-1.0 * GPa) and ase_stress[0, 0] == pytest.approx(-0.00624150907, rel=1e-6)


def test_mptrj_bad_frames_are_named(tmp_path, rng):
    from ase.calculators.emt import EMT

    atoms = random_alloy(rng)
    atoms.calc = EMT()
    good, no_forces, bad_element = (mptrj_frame(atoms, "mp-5", None) for _ in range(3))
    no_forces["force"] = None
    bad_element["structure"]["sites"][1]["species"][0]["element"] = "Qq"
    path = tmp_path / "bad.json"
    write_mptrj(path, {"mp-5": [good, no_forces, bad_element]})
    with pytest.raises(DataError, match=r"bad.json#mp-5/mp-5-1: no forces"):
        read_structures(path)
    skipped = SkippedRecords()
    assert len(read_structures(path, on_error="skip", skipped=skipped)) == 1
    assert skipped.count == 2 and "mp-5/mp-5-2: site 1 has unknown element symbol 'Qq'" in skipped.reasons[1]


def test_truncated_mptrj_json_is_named(tmp_path, rng):
    from ase.calculators.emt import EMT

    atoms = random_alloy(rng)
    atoms.calc = EMT()
    path = tmp_path / "cut.json"
    write_mptrj(path, {"mp-1": [mptrj_frame(atoms, "mp-1", None)], "mp-2": [mptrj_frame(atoms, "mp-2", None)]})
    text = path.read_text()
    path.write_text(text[: int(len(text) * 0.8)])
    structures = []
    with pytest.raises(DataError, match=r"cut.json: malformed or truncated JSON in material 'mp-2'"):
        for s in iter_structures(path):
            structures.append(s)
    assert len(structures) == 1  # the whole material before the cut was read


def test_extxyz_with_missing_atom_rows_names_the_record(tmp_path, rng):
    frames = [random_alloy(rng) for _ in range(3)]
    for atoms in frames:
        atoms.arrays["REF_forces"] = rng.standard_normal((len(atoms), 3))
    path = tmp_path / "short.xyz"
    ase.io.write(path, frames, format="extxyz")
    lines = path.read_text().splitlines()
    block = len(frames[0]) + 2
    del lines[block + 2 + 1]  # one atom row (positions and forces) missing in frame 1
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"short.xyz#1: line \d+: atom row"):
        read_structures(path, forces_key="REF_forces")


def test_extxyz_unknown_element_symbol_is_named(tmp_path, rng):
    path = tmp_path / "xx.xyz"
    ase.io.write(path, [random_alloy(rng), random_alloy(rng)], format="extxyz")
    lines = path.read_text().splitlines()
    block = int(lines[0]) + 2
    lines[block + 2] = "Qq" + lines[block + 2][2:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"xx.xyz#1: line \d+: unknown element 'Qq'"):
        read_structures(path)


def test_reader_options_are_checked():
    with pytest.raises(ValueError, match="mptrj reader takes no option.*energy_key"):
        iter_structures("x.json", energy_key="energy")
    with pytest.raises(ValueError, match=r"extxyz reader takes no option\(s\) \['energy_kye'\]"):
        iter_structures("x.xyz", energy_kye="REF_energy")


# ---- the shared real samples -----------------------------------------------------------------


def test_oc20_sample_in_three_formats_agrees(dataset_dir):
    folder = dataset_dir / "oc20_style"
    lmdb_frames = read_structures(folder / "c3h8_cu_relax_s2ef.lmdb")
    ase_frames = read_structures(folder / "c3h8_cu_relax.aselmdb")
    xyz_frames = read_structures(folder / "c3h8_cu_relax.extxyz")
    assert len(lmdb_frames) == len(ase_frames) == len(xyz_frames) == 101
    first = lmdb_frames[0]
    assert sorted(set(first.atomic_numbers.tolist())) == [1, 6, 29] and first.n_atoms == 38
    assert first.energy == pytest.approx(15.804699620277187, abs=1e-9)
    assert first.fixed.sum() == 18 and first.fixed[:18].all()
    assert np.bincount(first.tags).tolist() == [18, 9, 11]
    assert first.info == {"sid": 0, "fid": 0}
    for a, b, c in zip(lmdb_frames, ase_frames, xyz_frames):
        assert a.energy == pytest.approx(b.energy, abs=1e-6) == pytest.approx(c.energy, abs=1e-6)
        free = ~a.fixed
        # the legacy LMDB stores constrained forces (zero on fixed atoms); the other two the raw ones
        assert np.allclose(a.forces[free], b.forces[free], atol=1e-6) and not a.forces[a.fixed].any()
        assert np.allclose(b.forces, c.forces, atol=1e-9)
        assert np.allclose(a.positions, c.positions, atol=1e-5)  # the LMDB stores float32
        assert np.array_equal(a.tags, c.tags) and np.array_equal(a.fixed, b.fixed)


def test_oc22_and_mptrj_samples_hold_the_same_oxides(dataset_dir):
    db = read_structures(dataset_dir / "oc22_style" / "oxides.db")
    mp = read_structures(dataset_dir / "mptrj_style" / "oxides_mptrj_layout.json")
    assert len(db) == len(mp) == 295
    assert 8 in {int(z) for s in db for z in s.atomic_numbers}
    assert db[0].energy == pytest.approx(-41.358821) and mp[0].energy == pytest.approx(-41.358821)
    assert np.array_equal(db[0].atomic_numbers, [50, 50, 8, 8, 8, 8])  # SnO2
    assert mp[0].info["energy_field"] == "corrected_total_energy"
    for a, b in zip(db, mp):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        assert np.allclose(a.forces, b.forces) and np.allclose(a.positions, b.positions)
    with open(dataset_dir / "mptrj_style" / "oxides_mptrj_layout.json") as handle:
        assert sum(len(frames) for frames in json.load(handle).values()) == 295


def test_oc20_distribution_extxyz_xz_with_reference_energies(tmp_path):
    import lzma

    frames = emt_slabs(3)
    folder = tmp_path / "s2ef_train_200K"
    folder.mkdir()
    ase.io.write(folder / "0.extxyz.xz", frames, format="extxyz")
    references = [-1.5, -1.5, 2.25]
    with lzma.open(folder / "0.txt.xz", "wt") as handle:
        handle.writelines(f"random42,frame{k},{r}\n" for k, r in enumerate(references))
    assert detect_format(folder) == "oc20_extxyz"
    structures = read_structures(folder)
    for s, atoms, reference in zip(structures, frames, references):
        assert s.energy == pytest.approx(atoms.get_potential_energy() - reference)
        assert s.info["sid"] == "random42" and np.array_equal(s.fixed, atoms.get_tags() == 0)
    raw = read_structures(folder, referenced=False)
    assert raw[2].energy == pytest.approx(frames[2].get_potential_energy())
    with lzma.open(folder / "0.txt.xz", "wt") as handle:
        handle.write("random42,frame0,-1.5\n")
    with pytest.raises(DataError, match=r"0.extxyz.xz#1: 0.txt.xz has only 1 lines"):
        read_structures(folder)
