"""``mlip-train finetune=...`` from a trained model file: identity at lr 0, elements, E0s, freezing, replay."""


import csv

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.calculator import MLIPCalculator
from mlip.cli.train import train
from mlip.data.emt import make_emt_structures
from mlip.export import load_model
from tests.conftest import compose_train_config


@pytest.fixture(scope="module")
def cu_au_file(tmp_path_factory) -> str:
    """EMT-labelled Cu/Au structures (the foundation's Ni made Cu): new data of a subset of its elements."""
    structures = []
    for atoms in make_emt_structures(24, seed=7):
        atoms.numbers[atoms.numbers == 28] = 29
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            results["stress"] = atoms.get_stress(voigt=True)
        atoms.calc = SinglePointCalculator(atoms, **results)
        structures.append(atoms)
    path = tmp_path_factory.mktemp("cuau") / "cu_au.xyz"
    ase.io.write(path, structures, format="extxyz")
    return str(path)


def finetune_config(out, data_file, foundation, *overrides):
    return compose_train_config(out, data_file, "finetune=naive", f"model.path={foundation}", "dtype=float64",
                                "trainer.max_epochs=1", *overrides)


def predictions(model, atoms_list):
    calc = MLIPCalculator(model)
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append((atoms.get_potential_energy(), atoms.get_forces().copy()))
    return out


def test_at_lr_zero_the_finetuned_model_predicts_what_the_foundation_predicts(tmp_path, trained_run, cu_au_file):
    foundation = trained_run / "model.safetensors"
    train(finetune_config(tmp_path, cu_au_file, foundation, "module.lr=0.0", "module.ema_decay=null"))
    tuned = load_model(tmp_path / "model.safetensors")
    assert tuned.elements.tolist() == [29, 79]  # Ni cut away
    atoms_list = ase.io.read(cu_au_file, index=":4")
    for (e_f, f_f), (e_t, f_t) in zip(predictions(load_model(foundation), atoms_list), predictions(tuned, atoms_list)):
        assert abs(e_f - e_t) < 1e-9 * max(1.0, abs(e_f))
        np.testing.assert_allclose(f_t, f_f, rtol=0, atol=1e-10)


def train_loss(run_dir) -> float:
    import csv

    rows = [r for r in csv.DictReader(open(run_dir / "logs" / "metrics.csv")) if r.get("train_loss_epoch")]
    return float(rows[0]["train_loss_epoch"])


def test_data_with_an_element_the_foundation_lacks_is_refused_naming_it_and_the_file(tmp_path, trained_run, cu_au_file):
    structures = ase.io.read(cu_au_file, index=":")
    structures[3].numbers[0] = 78  # Pt: an EMT element the foundation never saw
    path = tmp_path / "with_pt.xyz"
    ase.io.write(path, structures, format="extxyz")
    from mlip.data.structure import DataError

    with pytest.raises(DataError, match=r"with_pt.xyz#3.*\['Pt'\] are not in the foundation"):
        train(finetune_config(tmp_path / "run", str(path), trained_run / "model.safetensors", "data.split_seed=0",
                              "data.val_fraction=0.0", "data.test_fraction=0.0", f"data.val_files={cu_au_file}"))


def test_a_cutoff_that_contradicts_the_file_is_refused(tmp_path, trained_run, cu_au_file):
    from mlip.finetune.pretrained import PretrainedError

    with pytest.raises(PretrainedError, match="model.r_max=3.0 contradicts .* whose cutoff is 4.0"):
        train(finetune_config(tmp_path, cu_au_file, trained_run / "model.safetensors", "model.r_max=3.0"))


def test_e0_modes_foundation_mapping_and_estimated(tmp_path, trained_run, cu_au_file):
    from mlip.finetune.e0s import estimated_e0s
    from mlip.finetune.rebuild import rebuild_potential

    foundation = load_model(trained_run / "model.safetensors")
    by_z = dict(zip(foundation.elements.tolist(), foundation.e0s.tolist()))
    zero_lr = ("module.lr=0.0", "module.ema_decay=null")
    train(finetune_config(tmp_path / "f", cu_au_file, trained_run / "model.safetensors", *zero_lr))
    assert load_model(tmp_path / "f" / "model.safetensors").e0s.tolist() == [by_z[29], by_z[79]]
    # and the statistics logged and written with the model name those E0s, not the data module's zeros
    from mlip.export import read_metadata

    written = read_metadata(tmp_path / "f" / "model.safetensors")["extra"]["statistics"]
    assert written["e0s"] == [by_z[29], by_z[79]]
    train(finetune_config(tmp_path / "m", cu_au_file, trained_run / "model.safetensors", *zero_lr,
                          "data.e0s={Cu: -1.5, Au: -2.5}"))
    assert load_model(tmp_path / "m" / "model.safetensors").e0s.tolist() == [-1.5, -2.5]
    train(finetune_config(tmp_path / "e", cu_au_file, trained_run / "model.safetensors", *zero_lr, "data.e0s=estimated"))
    estimated = load_model(tmp_path / "e" / "model.safetensors").e0s.numpy()

    # by hand: the foundation's energy error on the training split, least squares in the element counts
    from mlip.data.datamodule import split_by_seed
    from mlip.data.readers import read_structures

    train_split, _, _ = split_by_seed(read_structures(cu_au_file), 0.1, 0.1, 0)
    cut = rebuild_potential(foundation, [29, 79])
    calc = MLIPCalculator(cut)
    counts, errors = [], []
    for s in train_split:
        atoms = ase.Atoms(numbers=s.atomic_numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        atoms.calc = calc
        errors.append(s.energy - atoms.get_potential_energy())
        counts.append([(s.atomic_numbers == 29).sum(), (s.atomic_numbers == 79).sum()])
    delta = np.linalg.lstsq(np.array(counts, float), np.array(errors), rcond=None)[0]
    np.testing.assert_allclose(estimated, np.array([by_z[29], by_z[79]]) + delta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(estimated_e0s(cut, train_split), estimated, rtol=0, atol=1e-8)
    # and the estimated E0s explain the energies better than the foundation's
    assert np.abs(np.array(errors) - np.array(counts) @ delta).mean() < np.abs(errors).mean()


def test_frozen_blocks_do_not_move_and_the_rest_does(tmp_path, trained_run, cu_au_file):
    frozen = ["embedding", "interactions.0"]
    train(finetune_config(tmp_path, cu_au_file, trained_run / "model.safetensors", "module.lr=0.01",
                          "module.ema_decay=null", f"finetune.freeze=[{','.join(frozen)}]"))
    before = {k: v for k, v in load_model(trained_run / "model.safetensors").model.state_dict().items()}
    after = load_model(tmp_path / "model.safetensors").model.state_dict()
    for name, value in after.items():
        if name.startswith(("embedding.", "interactions.0.")) or before[name].shape != value.shape:
            if before[name].shape == value.shape:
                assert torch.equal(before[name], value), name
    moved = [n for n, v in after.items() if n.startswith("products.") and not torch.equal(before[n], v)]
    assert moved


def test_an_unknown_block_to_freeze_is_refused_listing_the_blocks(tmp_path, trained_run, cu_au_file):
    with pytest.raises(ValueError, match=r"no block \['interaction.7'\].*'interactions.0'"):
        train(finetune_config(tmp_path, cu_au_file, trained_run / "model.safetensors", "finetune.freeze=[interaction.7]"))


def replay_config(out, trained_run, cu_au_file, emt_file, *overrides):
    return compose_train_config(
        out, cu_au_file, "finetune=replay", f"model.path={trained_run / 'model.safetensors'}", "dtype=float64",
        "trainer.max_epochs=1", f"finetune.replay.files=[{emt_file}]", "finetune.elements=[28,29,79]",
        "finetune.replay.count=12", "module.lr=0.0", "module.ema_decay=null", *overrides)


def test_replay_weight_and_ratio_change_the_loss_and_both_heads_are_kept(tmp_path, trained_run, cu_au_file, emt_file):
    losses = {}
    for name, extra in {"w1": ["finetune.replay.weight=1.0"], "w5": ["finetune.replay.weight=5.0"],
                        "r05": ["finetune.replay.weight=1.0", "finetune.replay.ratio=0.25"]}.items():
        train(replay_config(tmp_path / name, trained_run, cu_au_file, emt_file, "finetune.replay.labels=dft", *extra))
        losses[name] = train_loss(tmp_path / name)
    assert losses["w5"] > 1.5 * losses["w1"]  # the replay structures' (EMT-labelled) errors count 5x
    assert losses["r05"] != pytest.approx(losses["w1"], rel=1e-3)
    model = load_model(tmp_path / "w1" / "model.safetensors")
    assert model.heads == ["foundation", "finetune"] and model.head == "finetune"


def test_pseudo_labels_are_the_foundations_and_heads_are_selectable_everywhere(tmp_path, trained_run, cu_au_file,
                                                                               emt_file):
    from mlip.finetune.replay import pseudo_label, replay_structures

    foundation = load_model(trained_run / "model.safetensors")
    replay = replay_structures(foundation, [emt_file], 5, "fps", "foundation")
    assert len(replay) == 5
    atoms = ase.Atoms(numbers=replay[0].atomic_numbers, positions=replay[0].positions, cell=replay[0].cell,
                      pbc=replay[0].pbc)
    atoms.calc = MLIPCalculator(foundation)
    assert replay[0].energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(replay[0].forces, atoms.get_forces(), atol=1e-12)
    assert pseudo_label(foundation, replay[:1])[0].energy == pytest.approx(replay[0].energy, rel=1e-12)

    train(replay_config(tmp_path / "a", trained_run, cu_au_file, emt_file, "module.lr=0.01"))
    tuned = tmp_path / "a" / "model.safetensors"
    # a share of the replay pool is held out: each head has its validation curve
    columns = next(csv.reader(open(tmp_path / "a" / "logs" / "metrics.csv")))
    assert {"val_foundation_forces_rmse", "val_finetune_forces_rmse"} <= set(columns), columns
    structures = ase.io.read(cu_au_file, index=":3")
    base = predictions(foundation, structures)
    old_head = predictions(load_model(tuned), structures)  # selected: the new head
    calc_f = MLIPCalculator(tuned, head="foundation")
    atoms = structures[0].copy()
    atoms.calc = calc_f
    moved = abs(atoms.get_potential_energy() - old_head[0][0])
    assert moved > 0 and abs(base[0][0] - old_head[0][0]) > 0
    # fine-tuning the fine-tuned model again, from its new head
    train(compose_train_config(tmp_path / "b", cu_au_file, "finetune=naive", f"model.path={tuned}",
                               "model.head=finetune", "dtype=float64", "trainer.max_epochs=1", "module.lr=0.0",
                               "module.ema_decay=null"))
    again = predictions(load_model(tmp_path / "b" / "model.safetensors"), structures)
    for (e_a, f_a), (e_b, f_b) in zip(old_head, again):
        assert abs(e_a - e_b) < 1e-9 * max(1.0, abs(e_a))
        np.testing.assert_allclose(f_a, f_b, atol=1e-10)


def test_one_head_of_a_finetuned_file_through_convert_and_eval(tmp_path, trained_run, cu_au_file, emt_file):
    from hydra import compose, initialize_config_dir

    from mlip.cli.convert import CONFIG_DIR as CONVERT_DIR
    from mlip.cli.convert import convert
    from mlip.cli.evaluate import CONFIG_DIR as EVAL_DIR
    from mlip.cli.evaluate import evaluate

    train(replay_config(tmp_path / "run", trained_run, cu_au_file, emt_file, "module.lr=0.01"))
    tuned = tmp_path / "run" / "model.safetensors"
    with initialize_config_dir(config_dir=str(CONVERT_DIR), version_base="1.3"):
        cfg = compose("convert", [f"input={tuned}", "framework=mlip", "head=foundation",
                                  f"output={tmp_path / 'foundation_head.safetensors'}"])
    single = load_model(convert(cfg))
    assert not single.heads
    atoms_list = ase.io.read(cu_au_file, index=":2")
    np.testing.assert_allclose([e for e, _ in predictions(single, atoms_list)],
                               [e for e, _ in predictions(_head(tuned, "foundation"), atoms_list)],
                               rtol=1e-12)
    scores = {}
    for head in ("foundation", "finetune"):
        with initialize_config_dir(config_dir=str(EVAL_DIR), version_base="1.3"):
            cfg = compose("eval", [f"model={tuned}", f"data={cu_au_file}", f"head={head}", "plots=false",
                                   f"output_dir={tmp_path / head}"])
        scores[head] = evaluate(cfg)["models"]["model"]["datasets"]
    assert scores["foundation"] != scores["finetune"]


def _head(path, name):
    model = load_model(path)
    model.select_head(name)
    return model
