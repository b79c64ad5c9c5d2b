"""mlip-relax and mlip-md from their configs: outputs, the summary, and bad structures."""

import json
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read, write
from hydra import compose, initialize_config_dir

from mlip.cli import md as md_cli
from mlip.cli import relax as relax_cli


def _config(module, name, *overrides):
    with initialize_config_dir(config_dir=str(module.CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture
def mixed_input(tmp_path, rng):
    good = bulk("Cu", "fcc", a=3.7, cubic=True)
    good.numbers[1] = 28
    good.rattle(0.05, seed=1)
    cluster = Atoms("CuNi2", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.0, 0]])
    structures = [
        good,
        Atoms("CuFe", positions=[[0, 0, 0], [2.5, 0, 0]]),                   # unknown element
        cluster,
        Atoms("Cu2", positions=[[0, 0, 0], [0.05, 0, 0]]),                   # overlapping
        Atoms("Cu2Ni", positions=[[0, 0, 0], [2.5, 0, 0], [40.0, 0, 0]]),  # isolated
    ]
    path = tmp_path / "in.extxyz"
    write(path, structures)
    return path


@pytest.mark.parametrize("batched", [False, True])
def test_relax_writes_results_and_names_failures(trained_run, mixed_input, tmp_path, batched, monkeypatch, capsys):
    out = tmp_path / f"out_{batched}"
    args = [f"model={trained_run / 'model.safetensors'}", f"input={mixed_input}", f"output_dir={out}",
            "fmax=0.01", "steps=300", f"batched={str(batched).lower()}", "progress=false"]
    results, paths = relax_cli.run(_config(relax_cli, "relax", *args))
    assert [r.status for r in results] == ["converged", "failed", "converged", "failed", "failed"]
    assert "Fe (Z=26)" in results[1].message and "overlapping" in results[3].message
    assert "isolated" in results[4].message and "in.extxyz#4" in results[4].message
    relaxed = read(paths["relaxed"], ":")
    assert len(relaxed) == 2 and all(np.abs(a.get_forces()).max() < 0.01 for a in relaxed)
    rows = json.loads(paths["json"].read_text())
    assert [row["status"] for row in rows] == [r.status for r in results] and rows[0]["energy_change"] < 0
    assert paths["csv"].read_text().count("\n") == 6
    assert len(list((out / "trajectories").glob("*.traj"))) == (0 if batched else 2)
    assert not list(out.rglob("*.partial"))
    # the command: refuses to replace those results unasked ...
    monkeypatch.setattr(sys, "argv", ["mlip-relax", *args])
    with pytest.raises(SystemExit, match=r"holds the results of an earlier mlip-relax run.*overwrite=true"):
        relax_cli.main()
    # ... prints the table, and exits 1 because some failed
    monkeypatch.setattr(sys, "argv", ["mlip-relax", *args, "overwrite=true"])
    with pytest.raises(SystemExit) as exit_:
        relax_cli.main()
    assert exit_.value.code == 1
    printed = capsys.readouterr().out
    assert "2 converged, 0 not converged, 3 failed" in printed and "overlapping" in printed


def test_batched_relax_refuses_cell_relaxation(trained_run, mixed_input, tmp_path):
    cfg = _config(relax_cli, "relax", f"model={trained_run / 'model.safetensors'}", f"input={mixed_input}",
                  "batched=true", "relax_cell=true", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(ValueError, match="positions only"):
        relax_cli.run(cfg)


def test_md_command(trained_run, tmp_path, monkeypatch, capsys):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    write(tmp_path / "cell.extxyz", atoms)
    args = [f"model={trained_run / 'model.safetensors'}", f"input={tmp_path / 'cell.extxyz'}", "steps=40",
            "interval=10", f"output_dir={tmp_path / 'md'}", "ensemble=nvt"]
    monkeypatch.setattr(sys, "argv", ["mlip-md", *args])
    md_cli.main()
    captured = capsys.readouterr()
    assert "nvt: 5 records over 40 fs" in captured.out
    assert "drift" not in captured.out  # a thermostat exchanges energy: no drift line
    assert "md (nvt)" in captured.err and "40/40" in captured.err  # the progress bar
    assert len(read(tmp_path / "md" / "md.traj", ":")) == 5
    assert (tmp_path / "md" / "md_log.csv").read_text().count("\n") == 6
    write(tmp_path / "bad.extxyz", Atoms("CuFe", positions=[[0, 0, 0], [2.5, 0, 0]]))
    monkeypatch.setattr(sys, "argv", ["mlip-md", *args, "ensemble=nve"])  # the same folder again: refused
    with pytest.raises(SystemExit, match="holds the results of an earlier mlip-md run"):
        md_cli.main()
    monkeypatch.setattr(sys, "argv", ["mlip-md", *args, "ensemble=nve", "overwrite=true"])
    md_cli.main()
    assert "drift" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["mlip-md", *args[:1], f"input={tmp_path / 'bad.extxyz'}"])
    with pytest.raises(SystemExit, match="Fe"):
        md_cli.main()


def test_fix_tags_hold_the_tagged_atoms(tmp_path, rng):
    from ase.build import fcc111

    from mlip.export import save_model
    from tests.conftest import make_tiny_potential

    slab = fcc111("Cu", size=(2, 2, 4), vacuum=6.0)  # tags 1 (top) .. 4 (bottom layer)
    slab.rattle(0.1, seed=2)
    write(tmp_path / "slab.extxyz", [slab])
    write(tmp_path / "untagged.extxyz", [bulk("Cu", "fcc", a=3.6, cubic=True)])
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    common = [f"model={model}", "fix_tags=[3,4]", "steps=20", "fmax=1e-4", "progress=false"]
    results, paths = relax_cli.run(_config(relax_cli, "relax", *common, f"input={tmp_path / 'slab.extxyz'}",
                                           f"output_dir={tmp_path / 'out'}"))
    relaxed, start = read(paths["relaxed"]), read(tmp_path / "slab.extxyz")  # both rounded alike by extxyz
    held = slab.get_tags() >= 3
    np.testing.assert_array_equal(relaxed.positions[held], start.positions[held])
    assert np.abs(relaxed.positions[~held] - start.positions[~held]).max() > 1e-4 and results[0].steps == 20
    results, _ = relax_cli.run(_config(relax_cli, "relax", *common, f"input={tmp_path / 'untagged.extxyz'}",
                                       f"output_dir={tmp_path / 'out2'}"))
    assert results[0].status == "failed" and "has no tags" in results[0].message
