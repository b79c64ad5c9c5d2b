"""mlip-train end to end on a tiny EMT set: outputs, learning, exact resume, label errors."""

import csv
import json
from pathlib import Path

import pytest
import torch

from mlip.cli.train import train
from mlip.data.structure import DataError
from tests.conftest import compose_train_config


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_writes_run_folder_and_lowers_validation_loss(tmp_path, emt_file, capsys):
    cfg = compose_train_config(tmp_path, emt_file, "trainer.max_epochs=4", "monitoring.val_parity.every_n_epochs=2")
    metrics = train(cfg)
    printed = capsys.readouterr().out
    assert f"model file: {tmp_path / 'model.safetensors'}" in printed and f"plots: {tmp_path / 'plots'}" in printed
    for name in ("config_resolved.yaml", "logs/metrics.csv", "checkpoints/last.ckpt", "model.safetensors", "test_metrics.json"):
        assert (tmp_path / name).is_file(), f"missing {name}"
    assert set(json.loads((tmp_path / "test_metrics.json").read_text())) >= {"test_energy_mae", "test_forces_rmse", "test_stress_rmse"}
    assert all(v > 0 for v in metrics.values())
    rows = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("val_loss")]
    val_losses = [float(r["val_loss"]) for r in rows]
    assert len(val_losses) == 4
    # monitoring: throughput and gradient norm per logged step, a parity plot per validation
    steps = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("structures_per_s")]
    assert steps and all(float(r["structures_per_s"]) > 0 and float(r["atoms_per_s"]) > 0 for r in steps)
    assert any(r.get("grad_norm") for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == ["learning_curve.png", "val_parity_epoch001.png", "val_parity_epoch003.png"]  # every second epoch
    # phase times: per epoch its training steps and seconds, then validation; the first step; the test
    times = json.loads((tmp_path / "phase_times.json").read_text())
    assert [e["epoch"] for e in times["epochs"]] == [0, 1, 2, 3] and all(e["steps"] > 0 for e in times["epochs"])
    assert all(e["train_s"] > 0 and e["validation_s"] > 0 for e in times["epochs"])
    assert times["fit_start"] < times["first_epoch_start"] < times["first_step_end"] < times["fit_end"] <= times["test_start"] < times["test_end"]
    assert min(val_losses[1:]) < val_losses[0], f"validation loss did not fall: {val_losses}"


def test_a_checkpoint_of_the_unfused_optimiser_resumes(tmp_path, emt_file):
    """Checkpoints written before the optimiser was fused (its groups say fused=None) still resume."""
    train(compose_train_config(tmp_path, emt_file, "trainer.max_epochs=1"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    state = _state(path)
    for group in state["optimizer_states"][0]["param_groups"]:
        group["fused"] = None
    torch.save(state, path)
    train(compose_train_config(tmp_path, emt_file, "trainer.max_epochs=2", "resume=auto"))
    resumed = _state(path)
    assert resumed["global_step"] == 2 * state["global_step"]
    assert all(group["fused"] for group in resumed["optimizer_states"][0]["param_groups"])


def test_resume_continues_from_the_same_step_and_matches_an_uninterrupted_run(tmp_path, emt_file):
    straight = tmp_path / "straight"
    train(compose_train_config(straight, emt_file, "trainer.max_epochs=3"))

    interrupted = tmp_path / "interrupted"
    train(compose_train_config(interrupted, emt_file, "trainer.max_epochs=2"))
    first = _state(interrupted / "checkpoints" / "last.ckpt")
    train(compose_train_config(interrupted, emt_file, "trainer.max_epochs=3", "resume=auto"))
    resumed = _state(interrupted / "checkpoints" / "last.ckpt")
    reference = _state(straight / "checkpoints" / "last.ckpt")

    steps_per_epoch = first["global_step"] // 2
    assert resumed["global_step"] == reference["global_step"] == first["global_step"] + steps_per_epoch
    assert resumed["optimizer_states"][0]["state"].keys() == first["optimizer_states"][0]["state"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-7), f"{key} differs after resume"
    val_rows = [r for r in csv.DictReader(open(interrupted / "logs" / "metrics.csv")) if r.get("val_loss")]
    assert [int(r["epoch"]) for r in val_rows] == [0, 1, 2], "the metrics CSV lost the epochs before the resume"
    for a, b in zip(resumed["optimizer_states"][0]["state"].values(), reference["optimizer_states"][0]["state"].values()):
        assert torch.allclose(a["exp_avg"], b["exp_avg"], rtol=1e-5, atol=1e-8)


def test_missing_stress_labels_for_a_stress_loss_are_reported(tmp_path, emt_file):
    cfg = compose_train_config(tmp_path, emt_file, "data.reader.stress_key=null", "data.reader.virial_key=null")
    with pytest.raises(DataError, match=r"emt.xyz#\d+: no stress label"):
        train(cfg)


def test_training_without_a_test_split_reports_validation_errors(tmp_path, emt_file):
    cfg = compose_train_config(tmp_path / "run", emt_file, "data.test_fraction=0.0", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert "val_forces_mae" in metrics and not any(k.startswith("test_") for k in metrics)


def test_cluster_trainer_configs_and_the_sbatch_example_compose():
    """trainer=ddp/slurm compose, and the overrides in scripts/slurm/train.sbatch are valid."""
    import re
    import shlex

    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    ddp = compose_train_config("/tmp/run", "x.xyz", "trainer=ddp").trainer
    assert (ddp.accelerator, ddp.strategy, ddp.devices) == ("gpu", "ddp", -1)
    sbatch = (Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch").read_text()
    command = re.search(r"srun mlip-train(.*?)\n\n?(?:$|\S)", sbatch.replace("\\\n", " ") + "\n", re.S).group(1)
    values = {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "job", "RUN_DIR": "runs/job"}
    command = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], command)
    overrides = [o for o in shlex.split(command) if not o.startswith("hydra.")]
    cfg = compose_train_config("/tmp/run", None, *overrides)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.resume) == (2, 4, "auto")
    (environment,) = instantiate(cfg.trainer.plugins)
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert cfg.preemption.requeue and cfg.step_checkpoint.every_n_train_steps == 500


def _tensorboard_events(folder: Path) -> list:
    """The Event records of the TensorBoard files under ``folder`` (TFRecord framing:
    length, its CRC, the record, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in folder.rglob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_tensorboard_logger_records_losses_monitoring_and_parity_images(tmp_path, emt_file):
    pytest.importorskip("tensorboardX", reason='the tensorboard extra: pip install "mlip-forge[tensorboard]"')
    train(compose_train_config(tmp_path, emt_file, "logger=tensorboard", "trainer.max_epochs=2",
                               "trainer.log_every_n_steps=1", "monitoring.val_parity.every_n_epochs=1"))
    values = [v for event in _tensorboard_events(tmp_path / "tensorboard") for v in event.summary.value]
    tags = {v.tag for v in values}
    assert {"train_loss_step", "val_loss", "val_forces_rmse", "grad_norm", "structures_per_s"} <= tags, tags
    assert {"lr-Adam/decay", "lr-Adam/no_decay"} <= tags, tags  # the weight-decay groups (train.yaml)
    images = [v.image for v in values if v.tag == "val_parity"]
    assert len(images) == 2 and all(im.width > 100 and im.height > 100 for im in images)
    assert (tmp_path / "logs" / "metrics.csv").is_file()  # the CSV is always written beside


def test_an_mp0b3_shaped_mace_trains_on_the_3bpa_sample_with_zbl(tmp_path, dataset_dir):
    """model=mace_mp: density blocks, Agnesi transform, ZBL inside the scale; the model file keeps
    them and loads back to the same predictions."""
    import numpy as np
    from ase.io import read

    from mlip.calculator import MLIPCalculator
    from mlip.export import load_potential, read_metadata

    folder = dataset_dir / "3bpa"
    cfg = compose_train_config(
        tmp_path, None, "data=3bpa", f"data.train_files={folder / 'train_300K.xyz'}", f"data.e0s={folder / 'iso_atoms.xyz'}",
        "model=mace_mp", "module.loss.stress_weight=0.0", "data.batch_size=16", "trainer.max_epochs=3",
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["test_forces_rmse"])
    rows = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("val_loss")]
    losses = [float(r["val_loss"]) for r in rows]
    assert min(losses[1:]) < losses[0], losses
    spec = read_metadata(tmp_path / "model.safetensors")["model_spec"]
    assert spec["pair_repulsion"] == {"kind": "zbl", "p": 5, "scaled": True}
    assert spec["kwargs"]["interaction"] == "density" and spec["kwargs"]["distance_transform"] == "agnesi"
    assert spec["kwargs"]["atomic_numbers"] == [1, 6, 7, 8]
    potential = load_potential(tmp_path / "model.safetensors")
    assert potential.pair_repulsion is not None and potential.model.radial_embedding.transform is not None
    atoms = read(folder / "train_300K.xyz", index=0)
    atoms.calc = MLIPCalculator(tmp_path / "model.safetensors", device="cpu", dtype="float64")
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


@pytest.mark.parametrize("model", ["facet", "tdn"])
def test_zbl_trains_with_every_model_family(tmp_path, emt_file, model):
    from mlip.export import load_potential

    metrics = train(compose_train_config(tmp_path, emt_file, f"model={model}", "model.pair_repulsion=zbl"))
    assert all(v == v for v in metrics.values())
    potential = load_potential(tmp_path / "model.safetensors")
    assert potential.pair_repulsion is not None and not potential.pair_repulsion_scaled


def test_an_mh1_shaped_mace_trains_and_its_file_loads(tmp_path, emt_file):
    """model=mace_mh (non-linear blocks, edge irreps, agnostic products, no cutoff on the embedding)
    at a tiny width: it learns, and its model file rebuilds the same architecture."""
    from mlip.export import load_potential, read_metadata
    from mlip.nn.blocks import NonLinearInteractionBlock

    metrics = train(compose_train_config(tmp_path, emt_file, "model=mace_mh", "model.edge_irreps=2x0e+2x1o",
                                         "trainer.max_epochs=3"))
    assert all(v == v for v in metrics.values())
    rows = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("val_loss")]
    losses = [float(r["val_loss"]) for r in rows]
    assert min(losses[1:]) < losses[0], losses
    kwargs = read_metadata(tmp_path / "model.safetensors")["model_spec"]["kwargs"]
    assert kwargs["interaction"] == "nonlinear" and kwargs["agnostic_product"] and not kwargs["apply_cutoff"]
    potential = load_potential(tmp_path / "model.safetensors")
    assert isinstance(potential.model.interactions[1], NonLinearInteractionBlock)
    assert potential.model.interactions[0].irreps_edge == potential.model.interactions[0].irreps_edge.__class__("2x0e")
