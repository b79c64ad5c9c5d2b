"""Every configs/data/*.yaml builds its data module; the dataset configs read the real samples."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mlip.cli.train import CONFIG_DIR

DATA_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def _data_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", "output_dir=.", *overrides])
    return cfg.data


def test_every_dataset_has_a_config():
    assert {"3bpa", "emt", "extxyz", "mptrj", "oc20_s2ef", "oc22_s2ef", "store"} <= set(DATA_CONFIGS)


GENERATED = {"emt", "emt_crystals"}  # made on first use: instantiated at a small size below


@pytest.mark.parametrize("name", [n for n in DATA_CONFIGS if n not in GENERATED])
def test_data_config_instantiates(name, tmp_path):
    required = {"extxyz": ["data.train_files=x.xyz"], "store": [f"data.train_store={tmp_path}"]}
    module = instantiate(_data_config(name, *required.get(name, [])))
    assert module.r_max == 5.0


@pytest.mark.parametrize(
    "name, files, n_train, elements, reference",
    [
        ("oc20_s2ef", "oc20_style/c3h8_cu_relax_s2ef.lmdb", 101, [1, 6, 29], "adsorption"),
        ("oc22_s2ef", "oc20_style/c3h8_cu_relax.aselmdb", 101, [1, 6, 29], "total"),
        ("mptrj", "mptrj_style/oxides_mptrj_layout.json", 265, None, "total"),
    ],
)
def test_dataset_configs_read_the_samples(dataset_dir, name, files, n_train, elements, reference):
    path = dataset_dir / files
    overrides = [f"data.train_files={path}", "data.num_workers=0"]
    if name.startswith("oc"):
        overrides.append(f"data.val_files={path}")
    if name == "oc20_s2ef":  # the sample is an LMDB; the config's default is the distributed extxyz.xz
        overrides += ["data.format=oc20_lmdb", "~data.reader"]
    if name == "oc22_s2ef":  # the same frames as an ASE-DB-in-LMDB, read by the aselmdb reader
        overrides += ["data.format=aselmdb", "~data.reader"]
    module = instantiate(_data_config(name, *overrides))
    module.setup()
    assert module.split_size("train") == n_train and module.energy_reference == reference
    if elements:
        assert module.statistics.elements == elements
    if reference == "adsorption":
        assert module.statistics.e0s == [0.0] * len(module.statistics.elements)
    batch = next(iter(module.train_dataloader()))
    assert batch.num_nodes <= module.max_atoms


def test_the_crystal_config_writes_its_set_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_DATA_DIR", str(tmp_path))
    cfg = _data_config("emt_crystals", "data.train_files.n_structures=12", "data.train_files.workers=1")
    module = instantiate(cfg)
    assert module.r_max == 5.0 and module.batch_size == 16
    assert (tmp_path / "emt_crystals" / "emt_crystals_12.extxyz").exists()
