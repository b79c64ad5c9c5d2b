"""mlip-eval: errors against labels and the equivariance audit, for exact and approximate models."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from hydra import compose, initialize_config_dir

from mlip.cli.evaluate import CONFIG_DIR, evaluate
from mlip.export import save_model
from mlip.models.potential import UnknownElementError
from tests.conftest import make_tiny_potential
from tests.models.test_tdn import _tdn


def _config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


@pytest.mark.parametrize("exact", [True, False])
def test_audit_separates_exact_from_approximate_models(tmp_path, emt_file, exact):
    potential = make_tiny_potential(correlation=2) if exact else _tdn(cp_rank=3, cp_share_paths=True)
    model = save_model(potential, tmp_path / "model.safetensors")
    report = evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=4", "audit=equivariance",
                              "num_rotations=3", "plots=false"))
    result = report["models"]["model"]["datasets"]["emt"]
    assert result["errors"]["structures"] == 4
    assert {"energy_mae", "forces_rmse", "stress_rmse"} <= set(result["errors"])
    audit = result["equivariance"]
    assert audit["structures"] == 4 and audit["rotations"] == 3
    assert audit["forces_max_eV/A"] >= audit["forces_mean_eV/A"]
    if exact:
        assert max(audit["energy_max_eV/atom"], audit["forces_max_eV/A"], audit["stress_max_eV/A^3"]) < 1e-10
    else:
        assert audit["forces_max_eV/A"] > 1e-8
    written = json.loads((tmp_path / "model_eval" / "report.json").read_text())
    assert written["models"]["model"]["datasets"]["emt"]["equivariance"] == audit
    assert not list(tmp_path.rglob("*.partial"))


def test_unknown_elements_and_missing_files_are_named(tmp_path):
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    path = tmp_path / "si.xyz"
    write(path, Atoms("Si2", positions=np.eye(3)[:2] * 2.0))
    with pytest.raises(UnknownElementError, match="Si"):
        evaluate(_config(f"model={model}", f"data={path}"))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        evaluate(_config(f"model={tmp_path / 'nothing.safetensors'}", f"data={path}"))


def test_models_side_by_side_on_several_datasets(tmp_path, dataset_dir, monkeypatch, capsys):
    """Two models on two 3BPA-style files: one table, plots, predictions written back."""
    import sys

    from ase.io import read

    from mlip.cli.evaluate import main
    from mlip.data.readers import read_structures
    from mlip.evaluation.predict import predict

    molecules = read(dataset_dir / "3bpa" / "train_300K.xyz", ":6")
    write(tmp_path / "test_300K.xyz", molecules[:3])
    write(tmp_path / "test_dih.xyz", molecules[3:])
    elements = sorted({int(z) for a in molecules for z in a.numbers})
    for k in (1, 2):
        (tmp_path / f"run{k}").mkdir()
        save_model(_molecule_model(elements, seed=k), tmp_path / f"run{k}" / "model.safetensors")
    args = [f"model=[{tmp_path}/run1/model.safetensors,{tmp_path}/run2/model.safetensors]",
            f"data=[{tmp_path}/test_300K.xyz,{tmp_path}/test_dih.xyz]", "predictions=true",
            f"output_dir={tmp_path}/eval", "reader={energy_key: energy, forces_key: forces}"]
    report = evaluate(_config(*args))
    assert [(r["model"], r["data"]) for r in report["rows"]] == [
        ("run1-model", "test_300K"), ("run1-model", "test_dih"), ("run2-model", "test_300K"), ("run2-model", "test_dih")]
    out = tmp_path / "eval"
    for name in ("run1-model_test_dih_parity.png", "run2-model_test_300K_errors.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "metrics.csv").read_text().count("\n") == 5
    assert {"C", "H", "N", "O"} <= set(report["models"]["run1-model"]["datasets"]["test_dih"]["per_element"])
    # predictions written back equal a direct call, next to the labels
    written = read(out / "run2-model_test_dih_predictions.extxyz", ":")
    structures = read_structures(tmp_path / "test_dih.xyz")
    from mlip.export import load_potential

    direct = predict(load_potential(tmp_path / "run2" / "model.safetensors"), structures)
    np.testing.assert_allclose([a.info["MLIP_energy"] for a in written], direct.energy, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([a.arrays["MLIP_forces"] for a in written]), direct.forces, atol=1e-7)  # extxyz: 8 decimals
    np.testing.assert_allclose(written[0].arrays["REF_forces"], structures[0].forces)
    monkeypatch.setattr(sys, "argv", ["mlip-eval", *args, "plots=false", "predictions=false", "overwrite=true"])
    main()
    printed = capsys.readouterr().out
    assert "run2-model / test_dih" in printed and "F cos" in printed


def _molecule_model(elements, seed):
    """A tiny random model for ``elements``."""
    import torch

    from mlip.models.potential import Potential
    from mlip.models.registry import build_model
    from tests.conftest import tiny_model_spec

    torch.manual_seed(seed)
    spec = tiny_model_spec(num_elements=len(elements))
    return Potential(build_model(spec), elements, [-1.0] * len(elements), 1.0, 0.0, model_spec=spec)


BAD_INPUTS = {  # issue 19's five cases: each one line, naming the file (and the record)
    "huge.xyz": (b'1000000000\nProperties=species:S:1:pos:R:3 energy=1.0 pbc="F F F"\nCu 0 0 0\n',
                 r"huge.xyz#0: line 1: header says 1000000000 atoms, but only \d+ bytes follow"),
    "random.xyz": (bytes(np.random.default_rng(0).integers(128, 256, 2000, dtype=np.uint8)),
                   r"random.xyz#0: line 1 is not UTF-8 text"),
    "overlap.xyz": (b'2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\n'
                    b"Cu 0 0 0 0 0 0\nCu 0 0 0 0 0 0\n", r"overlap.xyz#0: atoms 0 and 1 are 0.000 .* overlapping atoms"),
    "unknown.xyz": (b'2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\n'
                    b"Xx 0 0 0 0 0 0\nCu 2 0 0 0 0 0\n", r"unknown.xyz#0: line 3: unknown element 'Xx'"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS) + ["model"])
def test_bad_input_ends_in_one_line_naming_it(tmp_path, name):
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    data = tmp_path / "data.xyz"
    data.write_bytes(BAD_INPUTS["unknown.xyz"][0].replace(b"Xx", b"Cu"))
    if name == "model":
        model = tmp_path / "notamodel.safetensors"
        model.write_text("not a model")
        expected = r"notamodel.safetensors: not a model file"
    else:
        data = tmp_path / name
        data.write_bytes(BAD_INPUTS[name][0])
        expected = BAD_INPUTS[name][1]
    done = subprocess.run([sys.executable, "-m", "mlip.cli.evaluate", f"model={model}", f"data={data}", "plots=false"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlip-eval: "), done.stderr[-2000:]
    assert re.search(expected, lines[0]), lines[0]


def test_a_multi_head_model_is_scored_by_the_head_asked_for(tmp_path):
    """mlip-eval head=...: labels made by one head of a converted two-head mace-torch model are
    matched by that head and missed by the other."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    from mlip.convert.mace_torch import convert_mace_torch
    from tests.convert.test_mace_torch import ORACLE, REFERENCES

    model = save_model(convert_mace_torch(ORACLE / "scaleshift_two_heads_nu2_l1_f64.model", head="all"),
                       tmp_path / "heads.safetensors")
    labelled = []
    for atoms, row in zip(read(ORACLE / "structures.extxyz", ":"),
                          REFERENCES["scaleshift_two_heads_nu2_l1_f64@r2scan"]["predictions"]):
        atoms.calc = SinglePointCalculator(atoms, energy=row["energy"], forces=np.asarray(row["forces"]))
        labelled.append(atoms)
    write(tmp_path / "r2scan.xyz", labelled)
    errors = {}
    for head in ("r2scan", "pbe"):
        report = evaluate(_config(f"model={model}", f"data={tmp_path / 'r2scan.xyz'}", f"head={head}", "plots=false",
                                  f"output_dir={tmp_path / head}"))
        errors[head] = report["models"]["heads"]["datasets"]["r2scan"]["errors"]["forces_rmse"]
    assert errors["r2scan"] < 1e-6 < errors["pbe"]
    # beside a single-head model: one name applies to the model that has heads, a list one per model
    single = save_model(convert_mace_torch(ORACLE / "scaleshift_two_heads_nu2_l1_f64.model", head="pbe"),
                        tmp_path / "single.safetensors")
    both = f"model=[{model},{single}]"
    report = evaluate(_config(both, f"data={tmp_path / 'r2scan.xyz'}", "head=r2scan", "plots=false",
                              f"output_dir={tmp_path / 'both'}"))
    assert [m["head"] for m in report["models"].values()] == ["r2scan", None]
    report = evaluate(_config(both, f"data={tmp_path / 'r2scan.xyz'}", "head=[pbe,null]", "plots=false",
                              f"output_dir={tmp_path / 'list'}"))
    assert [m["head"] for m in report["models"].values()] == ["pbe", None]
    with pytest.raises(ValueError, match="no head 'r2scn'"):
        evaluate(_config(both, f"data={tmp_path / 'r2scan.xyz'}", "head=r2scn", "plots=false",
                         f"output_dir={tmp_path / 'typo'}"))


@pytest.mark.parametrize("direct", [False, True])
def test_escaip_is_audited_and_direct_forces_are_labelled_non_conservative(tmp_path, emt_file, direct):
    from tests.models.test_escaip import _escaip

    model = save_model(_escaip(direct_forces=direct), tmp_path / "model.safetensors")
    report = evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=3", "audit=equivariance",
                              "num_rotations=2", "plots=false"))
    entry = report["models"]["model"]
    assert entry["forces"] == ("direct (non-conservative)" if direct else "conservative")
    assert report["rows"][0]["forces"] == entry["forces"]
    assert entry["datasets"]["emt"]["equivariance"]["forces_max_eV/A"] > 1e-6  # not equivariant by construction


def test_a_file_without_labels_under_the_keys_is_an_error_naming_both_key_sets(tmp_path):
    """Labels under other keys (REF_*): no empty table and exit 0, but the keys looked for and
    those the file has."""
    from ase.build import bulk

    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    atoms = bulk("Cu", cubic=True)
    atoms.info["REF_energy"] = -1.0
    atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
    write(tmp_path / "ref.xyz", atoms)
    from mlip.data.structure import DataError

    with pytest.raises(DataError, match=r"ref.xyz: no structure has a label under the keys looked for "
                                        r"\(energy_key='energy', forces_key='forces'.*info: REF_energy.*arrays: REF_forces"):
        evaluate(_config(f"model={model}", f"data={tmp_path / 'ref.xyz'}", "plots=false"))
    report = evaluate(_config(f"model={model}", f"data={tmp_path / 'ref.xyz'}", "plots=false",
                              "reader={energy_key: REF_energy, forces_key: REF_forces}"))
    assert "forces_rmse" in report["rows"][0]


def test_a_second_evaluation_into_the_same_folder_is_refused_unless_overwrite(tmp_path, emt_file):
    """The metrics of an hour-long audit are not replaced silently; with overwrite=true the
    folder is emptied first, so no plot of the earlier run stays beside the new metrics."""
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=2", "plots=false"))
    stale = tmp_path / "model_eval" / "model_old_parity.png"
    stale.write_bytes(b"png")
    with pytest.raises(FileExistsError, match=r"model_eval holds the results of an earlier mlip-eval run; give "
                                              r"another output_dir=\.\.\. or overwrite=true"):
        evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=2", "plots=false"))
    report = evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=2", "plots=false",
                              "overwrite=true"))
    assert not stale.exists() and sorted(p.name for p in (tmp_path / "model_eval").iterdir()) == report["files"]


def test_the_audit_samples_its_own_structures_apart_from_the_scored_set(tmp_path, emt_file, capsys):
    model = save_model(make_tiny_potential(correlation=2), tmp_path / "model.safetensors")
    report = evaluate(_config(f"model={model}", f"data={emt_file}", "max_structures=6", "audit=equivariance",
                              "num_rotations=2", "audit_structures=3", "plots=false"))
    result = report["models"]["model"]["datasets"]["emt"]
    assert result["errors"]["structures"] == 6 and result["equivariance"]["structures"] == 3
    assert "equivariance audit" in capsys.readouterr().err  # its progress bar


def test_an_unknown_element_names_the_model_and_the_structure(tmp_path):
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    write(tmp_path / "si.xyz", Atoms("Si2", positions=np.eye(3)[:2] * 2.0))
    with pytest.raises(UnknownElementError, match=r"model .*model.safetensors: .*si.xyz#0: element Si \(Z=14\) is not "
                                                  r"known to this model"):
        evaluate(_config(f"model={model}", f"data={tmp_path / 'si.xyz'}"))


def test_errors_by_config_type_in_the_report_and_a_table(tmp_path, emt_file, capsys, monkeypatch):
    from ase.io import read

    from mlip.cli.evaluate import main

    frames = read(emt_file, ":6")
    for k, atoms in enumerate(frames):
        atoms.info["config_type"] = "bulk" if k % 2 else "surface"
    write(tmp_path / "typed.xyz", frames)
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    args = [f"model={model}", f"data={tmp_path / 'typed.xyz'}"]
    report = evaluate(_config(*args))
    assert (tmp_path / "model_eval" / "model_typed_parity.png").read_bytes()[:4] == b"\x89PNG"  # coloured by type
    per_type = report["models"]["model"]["datasets"]["typed"]["per_config_type"]
    assert list(per_type) == ["surface", "bulk"] and per_type["bulk"]["structures"] == 3
    whole = report["rows"][0]
    # the parts' squared errors add up to the whole's
    atoms = {k: v["atoms"] for k, v in per_type.items()}
    summed = sum(v["forces_rmse"] ** 2 * atoms[k] for k, v in per_type.items()) / sum(atoms.values())
    assert summed == pytest.approx(whole["forces_rmse"] ** 2, rel=1e-9)
    assert (tmp_path / "model_eval" / "per_config_type.csv").read_text().count("\n") == 3
    monkeypatch.setattr(sys, "argv", ["mlip-eval", *args, "overwrite=true"])
    main()
    assert "typed [bulk]" in capsys.readouterr().out
