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


@pytest.fixture(scope="module")
def escaip_runs(tmp_path_factory, emt_file):
    """Tiny EScAIPs trained on the small EMT set, forces by autograd and direct."""
    import torch

    from mlip.cli.train import train
    from tests.conftest import compose_train_config

    previous, runs = torch.get_default_dtype(), {}
    for direct in (False, True):
        runs[direct] = tmp_path_factory.mktemp(f"escaip_direct_{direct}")
        train(compose_train_config(runs[direct], emt_file, "model=escaip", f"model.direct_forces={direct}",
                                   "trainer.max_epochs=3", "dtype=float64"))
    torch.set_default_dtype(previous)
    return runs


def test_nve_drift_of_direct_forces_against_forces_by_autograd(escaip_runs):
    # the same short NVE run: the conservative model keeps its energy, the direct one does not
    spreads = {}
    for direct, run in escaip_runs.items():
        result, _ = run_md(_cell(), MLIPCalculator(run / "model.safetensors"), "nve", timestep=1.0, steps=100,
                           temperature=300.0, interval=5)
        assert result.status == "completed" and np.isfinite(result.total).all()
        spreads[direct] = np.ptp(result.total) / result.n_atoms
        print(f"EScAIP {'direct' if direct else 'conservative'}: NVE drift {result.drift:.2e} eV/atom/ps, "
              f"total energy spread {spreads[direct]:.2e} eV/atom")
        if not direct:
            assert abs(result.drift) < 1e-4 and spreads[direct] < 2e-4
    assert spreads[True] > 10 * spreads[False], spreads


def test_mlip_md_and_mlip_relax_warn_on_direct_forces(escaip_runs, tmp_path, caplog):
    from ase.io import write
    from hydra import compose, initialize_config_dir

    from mlip.cli import md, relax

    write(tmp_path / "cell.extxyz", _cell())
    for direct, run_dir in escaip_runs.items():
        for module, extra in ((md, "steps=5"), (relax, "steps=20")):
            caplog.clear()
            with initialize_config_dir(config_dir=str(module.CONFIG_DIR), version_base="1.3"):
                name = module.__name__.rsplit(".", 1)[1]
                cfg = compose(name, overrides=[f"model={run_dir / 'model.safetensors'}",
                                               f"input={tmp_path / 'cell.extxyz'}", extra,
                                               f"output_dir={tmp_path / name / str(direct)}"])
            result, _ = module.run(cfg)
            assert (result.status == "completed") if module is md else len(result) == 1
            assert ("non-conservative" in caplog.text) is direct, name
