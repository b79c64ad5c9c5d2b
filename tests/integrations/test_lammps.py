"""LAMMPS through ML-IAP against our ASE calculator (the real LAMMPS: ../shared/lammps, built once).

The build (``../shared/lammps/build.sh``: ML-IAP + PYTHON, serial, ~4 minutes on 2 cores) goes to
``.lammps/`` in the checkout (git-ignored) and is reused while its source does not change.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

from mlip.calculator import MLIPCalculator
from mlip.export import save_model
from mlip.integrations.lammps import write_lammps_model
from tests.conftest import ELEMENTS, FOUNDATION_PARTS, make_tiny_potential

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = Path(os.environ.get("MLIP_LAMMPS_BUILD", ROOT.parent / "shared" / "lammps" / "build.sh"))
EV_PER_A3_IN_BAR = 1.6021765e6  # LAMMPS' own constant for metal units (force.nktv2p), not CODATA's


@pytest.fixture(scope="session")
def lammps_site() -> Path:
    """PYTHONPATH of a LAMMPS with ML-IAP and PYTHON: built from the shared source on first use."""
    if not BUILD_SCRIPT.is_file():
        pytest.skip(f"no LAMMPS source to build ({BUILD_SCRIPT}; set MLIP_LAMMPS_BUILD)")
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"building LAMMPS needs {missing} on PATH")
    try:
        import Cython  # noqa: F401
    except ImportError:
        pytest.skip("building LAMMPS' ML-IAP Python coupling needs Cython (the test extra has it)")
    prefix = ROOT / ".lammps"
    done = subprocess.run(["bash", str(BUILD_SCRIPT), str(prefix)], env=dict(os.environ, PYTHON=sys.executable),
                          capture_output=True, text=True)
    assert done.returncode == 0, f"LAMMPS build failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return prefix / "site"


def lower_triangular_cell(rng, repeat=(3, 2, 2)) -> Atoms:
    """A rattled multi-element fcc cell whose lattice vectors already follow LAMMPS' convention
    (a along x, b in the xy plane), so no rotation separates the two programs' frames."""
    a = 3.7
    cell = np.diag([a * repeat[0], a * repeat[1], a * repeat[2]])
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.4, -0.3, 0.25
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    fractions = np.array([(b + np.array([i, j, k])) / np.array(repeat) for i in range(repeat[0])
                          for j in range(repeat[1]) for k in range(repeat[2]) for b in base])
    atoms = Atoms(numbers=rng.choice(ELEMENTS, size=len(fractions)), scaled_positions=fractions, cell=cell, pbc=True)
    atoms.positions += 0.08 * rng.standard_normal(atoms.positions.shape)
    return atoms


def run_lammps(site: Path, mliap: Path, atoms: Atoms, elements: list[str], cutoff: float, tmp: Path,
               nve_steps: int = 0, pair_elements: list[str] | None = None) -> dict:
    """LAMMPS on ``atoms`` (types in the order of ``elements``; ``pair_elements``: the names
    ``pair_coeff`` gives those types, default the same)."""
    data = tmp / "cell.lmp"
    write(data, atoms, format="lammps-data", specorder=elements, masses=True, atom_style="atomic")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("lammps_run.py")), str(mliap), str(data),
                           ",".join(pair_elements or elements), str(cutoff), str(nve_steps)],
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)])),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layers,parts", [(1, {}), (2, {}), (2, FOUNDATION_PARTS)], ids=["1-layer", "2-layer", "mp0b3-parts"])
def test_energy_forces_and_virial_equal_the_ase_calculator(lammps_site, tmp_path, rng, layers, parts):
    potential = make_tiny_potential(seed=6, num_interactions=layers, **parts)
    model_file = save_model(potential, tmp_path / "model.safetensors")
    mliap = write_lammps_model(model_file)
    atoms = lower_triangular_cell(rng)
    from ase.data import chemical_symbols

    elements = [chemical_symbols[z] for z in ELEMENTS]
    result = run_lammps(lammps_site, mliap, atoms, elements, layers * potential.r_max + 1.0, tmp_path)
    atoms.calc = MLIPCalculator(model_file)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    stress = atoms.get_stress(voigt=True)  # xx yy zz yz xz xy, eV/Å³, ASE's sign (tension positive)
    assert result["energy"] == pytest.approx(energy, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(np.array(result["forces"]), forces, rtol=0, atol=1e-10)
    pressure = np.array(result["pressure"]) / EV_PER_A3_IN_BAR  # xx yy zz xy xz yz: LAMMPS' pressure is -stress
    ours = -np.array([stress[0], stress[1], stress[2], stress[5], stress[4], stress[3]])
    np.testing.assert_allclose(pressure, ours, rtol=0, atol=1e-10)


def test_nve_conserves_energy_over_100_fs(lammps_site, tmp_path, rng):
    potential = make_tiny_potential(seed=6)
    mliap = write_lammps_model(save_model(potential, tmp_path / "model.safetensors"))
    atoms = lower_triangular_cell(rng, (2, 2, 2))
    from ase.data import chemical_symbols

    result = run_lammps(lammps_site, mliap, atoms, [chemical_symbols[z] for z in ELEMENTS], 2 * potential.r_max + 1.0,
                        tmp_path, nve_steps=200)
    totals = np.array(result["etotal"])
    assert np.abs(totals - totals[0]).max() / len(atoms) < 1e-4  # eV/atom


def test_an_element_the_model_lacks_is_refused_by_lammps(lammps_site, tmp_path, rng):
    potential = make_tiny_potential(seed=6)
    mliap = write_lammps_model(save_model(potential, tmp_path / "model.safetensors"))
    atoms = lower_triangular_cell(rng, (1, 1, 1))
    with pytest.raises(AssertionError, match=r"maps atom types to \['Pt'\], which the model does not know"):
        run_lammps(lammps_site, mliap, atoms, ["Ni", "Cu", "Au"], 9.0, tmp_path, pair_elements=["Ni", "Cu", "Pt"])


def test_the_lammps_file_holds_no_weights_and_names_the_model_file(tmp_path):
    import pickle

    potential = make_tiny_potential()
    model_file = save_model(potential, tmp_path / "model.safetensors")
    mliap = write_lammps_model(model_file)
    assert mliap.suffix == ".mliap" and mliap.stat().st_size < 2000
    loaded = pickle.loads(mliap.read_bytes())
    assert loaded.options["model_file"] == str(model_file.resolve())
    assert loaded.known == ["Ni", "Cu", "Au"] and loaded.rcutfac == pytest.approx(potential.r_max / 2)
    with pytest.raises(ValueError, match="torch.load"):
        write_lammps_model(model_file, tmp_path / "model.pt")
    torch.testing.assert_close(loaded.potential.e0s, potential.e0s)


def test_escaip_runs_exactly_in_lammps(lammps_site, tmp_path, rng):
    from ase.data import chemical_symbols

    from tests.models.test_escaip import _escaip

    potential = _escaip()
    model_file = save_model(potential, tmp_path / "escaip.safetensors")
    mliap = write_lammps_model(model_file)
    atoms = lower_triangular_cell(rng)
    elements = [chemical_symbols[z] for z in ELEMENTS]
    # 2 blocks and the neighbour shell its input features read: 3 x r_max of ghosts
    result = run_lammps(lammps_site, mliap, atoms, elements, 3 * potential.r_max + 1.0, tmp_path)
    atoms.calc = MLIPCalculator(model_file)
    assert result["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(np.array(result["forces"]), atoms.get_forces(), rtol=0, atol=1e-10)


def test_a_model_with_direct_forces_is_refused_for_lammps(tmp_path):
    from tests.models.test_escaip import _escaip

    model_file = save_model(_escaip(direct_forces=True), tmp_path / "escaip.safetensors")
    with pytest.raises(ValueError, match="predicted directly, not derivatives of the energy"):
        write_lammps_model(model_file)


def test_the_file_written_by_the_command_loads_in_lammps(lammps_site, tmp_path, rng):
    """``python -m mlip.integrations.lammps`` as documented: the class is pickled by its importable
    name (not ``__main__``), the printed elements are the model's, and LAMMPS runs the file."""
    import pickle
    from ase.data import chemical_symbols

    potential = make_tiny_potential(seed=6)
    model_file = save_model(potential, tmp_path / "model.safetensors")
    done = subprocess.run([sys.executable, "-m", "mlip.integrations.lammps", str(model_file)], cwd=tmp_path,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert "elements Ni Cu Au," in done.stdout and "comm_modify cutoff 9" in done.stdout
    mliap = tmp_path / "model.mliap"
    assert b"__main__" not in mliap.read_bytes() and type(pickle.loads(mliap.read_bytes())).__module__ == \
        "mlip.integrations.lammps"
    atoms = lower_triangular_cell(rng, (2, 2, 2))
    result = run_lammps(lammps_site, mliap, atoms, [chemical_symbols[z] for z in ELEMENTS],
                        2 * potential.r_max + 1.0, tmp_path)
    atoms.calc = MLIPCalculator(model_file)
    assert result["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-10, abs=1e-10)


def test_the_docs_python_snippet_runs_lammps_as_written(lammps_site, tmp_path, rng):
    """docs/md.md's LAMMPS input and its Python driver, as written (the run shortened to 10 steps)."""
    import re

    text = (ROOT / "docs" / "md.md").read_text()
    script = re.search(r"```lammps\n(.*?)```", text, re.S).group(1)
    driver = re.search(r"Running LAMMPS from Python.*?```python\n(.*?)```", text, re.S).group(1)
    potential = make_tiny_potential(seed=6)
    model_file = save_model(potential, tmp_path / "model.safetensors")
    write_lammps_model(model_file, tmp_path / "model.mliap")
    atoms = lower_triangular_cell(rng, (2, 2, 2))
    atoms.set_chemical_symbols(["Cu", "Au"] * (len(atoms) // 2))
    write(tmp_path / "cell.lmp", atoms, format="lammps-data", specorder=["Cu", "Au"], masses=True, atom_style="atomic")
    (tmp_path / "in.lammps").write_text(re.sub(r"^run\s+\d+", "run          10", script, flags=re.M))
    (tmp_path / "driver.py").write_text(driver)
    done = subprocess.run([sys.executable, "driver.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(lammps_site), str(ROOT)])))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Loop time" in done.stdout
