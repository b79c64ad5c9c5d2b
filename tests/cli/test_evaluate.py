"""mlip-eval: errors against labels and the equivariance audit, for exact and approximate models."""

import json

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
                              "num_rotations=3"))
    assert report["structures"] == 4
    assert {"energy_mae", "forces_rmse", "stress_rmse"} <= set(report["errors"])
    audit = report["equivariance"]
    assert audit["structures"] == 4 and audit["rotations"] == 3
    assert audit["forces_max_eV/A"] >= audit["forces_mean_eV/A"]
    if exact:
        assert max(audit["energy_max_eV/atom"], audit["forces_max_eV/A"], audit["stress_max_eV/A^3"]) < 1e-10
    else:
        assert audit["forces_max_eV/A"] > 1e-8
    written = json.loads((tmp_path / "model_eval.json").read_text())
    assert written["equivariance"] == audit and not list(tmp_path.glob("*.partial"))


def test_unknown_elements_and_missing_files_are_named(tmp_path):
    model = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    path = tmp_path / "si.xyz"
    write(path, Atoms("Si2", positions=np.eye(3)[:2] * 2.0))
    with pytest.raises(UnknownElementError, match="Si"):
        evaluate(_config(f"model={model}", f"data={path}"))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        evaluate(_config(f"model={tmp_path / 'nothing.safetensors'}", f"data={path}"))
