"""mlip-preprocess from its Hydra config, then mlip-train on the store it wrote."""

import json

import pytest
from hydra import compose, initialize_config_dir

from mlip.cli.preprocess import CONFIG_DIR, preprocess
from mlip.cli.train import train
from tests.conftest import compose_train_config


def _preprocess_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="preprocess", overrides=list(overrides))


def test_preprocess_then_train_on_the_store(tmp_path, emt_file):
    store = tmp_path / "store"
    manifest = preprocess(_preprocess_config(f"input={emt_file}", f"output={store}", "cutoff=4.0", "shard_size=12"))
    assert manifest["n_structures"] == 40 and len(manifest["shards"]) == 4
    cfg = compose_train_config(
        tmp_path / "run", None, "data=store", f"data.train_store={store}", "data.max_atoms=80",
        "data.num_workers=0", "data.val_fraction=0.15", "data.test_fraction=0.1", "trainer.max_epochs=1",
    )
    metrics = train(cfg)
    assert {"test_energy_mae", "test_forces_mae"} <= set(metrics)
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == pytest.approx(metrics)


def test_preprocess_rejects_adsorption_energies_with_fitted_e0s(tmp_path, emt_file):
    from mlip.data.structure import DataError

    with pytest.raises(DataError, match="e0s=zero"):
        preprocess(_preprocess_config(f"input={emt_file}", f"output={tmp_path}/s", "energy_reference=adsorption"))
