"""MD through ASE's integrators: NVE conserves the model's energy; NVT and NPT run and stay finite."""

import numpy as np
import pytest
from ase.build import bulk

from mlip.calculator import MLIPCalculator
from mlip.simulation.md import run_md


@pytest.fixture(scope="module")
def trained_calculator(trained_run):
    return MLIPCalculator(trained_run / "model.safetensors")


def _cell():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.numbers[::3] = 28  # Ni: a CuNi alloy, as the EMT training set has
    return atoms


def test_nve_conserves_energy(trained_calculator):
    # 1 fs steps for 0.5 ps at 300 K: velocity Verlet's drift must be tiny next to kT
    result, _ = run_md(_cell(), trained_calculator, "nve", timestep=1.0, steps=500, temperature=300.0, interval=5)
    assert result.status == "completed"
    print(f"NVE drift {result.drift:.2e} eV/atom/ps, total energy spread {np.ptp(result.total) / 32:.2e} eV/atom")
    assert abs(result.drift) < 1e-4
    assert np.ptp(result.total) / result.n_atoms < 2e-4  # kT at 300 K is 2.6e-2 eV
    assert np.ptp(result.potential) > 10 * np.ptp(result.total)  # the energy does move between its two parts


@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_thermostatted_runs(trained_calculator, ensemble, tmp_path):
    result, final = run_md(_cell(), trained_calculator, ensemble, timestep=2.0, steps=150, temperature=600.0,
                           friction=0.05, taut=20.0, taup=200.0, interval=10, trajectory=tmp_path / "md.traj")
    assert result.status == "completed" and len(result.time) == 16
    assert np.isfinite(result.total).all() and 200 < np.mean(result.temperature[5:]) < 1200
    if ensemble == "npt":
        assert result.volume[-1] != result.volume[0]
    assert (tmp_path / "md.traj").is_file() and not list(tmp_path.glob("*.partial"))
