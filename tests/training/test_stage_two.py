"""StageTwo: mace-torch's second stage (loss weights, learning rate, best checkpoint anew)."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mlip.training.loss import EnergyForcesStressLoss
from mlip.training.stage_two import StageTwo


def _run(epoch: int, lr: float = 0.01, best: str = "best-epoch=001.ckpt"):
    """The parts of a trainer and a module that StageTwo reads and sets."""
    checkpoint = ModelCheckpoint(monitor="val_loss")
    checkpoint.best_model_path, checkpoint.best_model_score = best, torch.tensor(0.5)
    checkpoint.best_k_models, checkpoint.kth_value = {best: torch.tensor(0.5)}, torch.tensor(0.5)
    trainer = SimpleNamespace(current_epoch=epoch, optimizers=[SimpleNamespace(param_groups=[{"lr": lr}, {"lr": lr}])],
                              checkpoint_callbacks=[checkpoint], datamodule=None)
    module = SimpleNamespace(loss=EnergyForcesStressLoss(1.0, 100.0, 0.0), graphed_loss="captured", plateau="plateau",
                             hparams=SimpleNamespace(scheduler="plateau"))
    module.release_training_graphs = lambda: setattr(module, "graphed_loss", None)
    return trainer, module, checkpoint


def test_stage_two_switches_weights_and_learning_rate_and_restarts_the_best_checkpoint():
    stage = StageTwo(start_epoch=2, energy_weight=1000.0, forces_weight=10.0, lr=1e-3)
    trainer, module, checkpoint = _run(epoch=1)
    stage.on_train_epoch_start(trainer, module)  # stage one: nothing changes
    assert module.loss.weights == {"energy": 1.0, "forces": 100.0, "stress": 0.0}
    assert (module.graphed_loss, module.plateau, trainer.optimizers[0].param_groups[0]["lr"]) == ("captured", "plateau", 0.01)

    trainer.current_epoch = 2
    stage.on_train_epoch_start(trainer, module)
    assert module.loss.weights == {"energy": 1000.0, "forces": 10.0, "stress": 0.0}
    assert module.graphed_loss is None and module.plateau is None
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [1e-3, 1e-3]
    assert (checkpoint.best_model_path, checkpoint.best_model_score, checkpoint.best_k_models) == ("", None, {})
    assert checkpoint.kth_value == torch.inf
    assert stage.state_dict() == {"started": True}

    # later epochs: the plateau may not come back into play, and the learning rate is left alone
    trainer.optimizers[0].param_groups[0]["lr"] = 5e-4
    module.graphed_loss = "captured again"
    trainer.current_epoch = 3
    stage.on_train_epoch_start(trainer, module)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 5e-4 and module.graphed_loss == "captured again"


def test_a_run_resumed_in_stage_two_keeps_its_learning_rate_and_best_checkpoint():
    stage = StageTwo(start_epoch=2, energy_weight=1000.0, forces_weight=10.0, stress_weight=1.0, lr=1e-3)
    stage.load_state_dict({"started": True})  # from the checkpoint
    trainer, module, checkpoint = _run(epoch=4, lr=7e-4, best="best-epoch=003.ckpt")
    stage.on_train_start(trainer, module)  # part-way through epoch 4: Lightning skips on_train_epoch_start
    assert module.loss.weights == {"energy": 1000.0, "forces": 10.0, "stress": 1.0}  # weights live in the config
    assert module.graphed_loss is None and module.plateau is None
    assert trainer.optimizers[0].param_groups[0]["lr"] == 7e-4
    assert checkpoint.best_model_path == "best-epoch=003.ckpt"


def test_stage_two_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="at least 1"):
        StageTwo(start_epoch=0)
    trainer, module, _ = _run(epoch=0)
    module.hparams.scheduler = "cosine"
    with pytest.raises(ValueError, match="scheduler=plateau or constant"):
        StageTwo(start_epoch=2).on_fit_start(trainer, module)


def test_training_with_stage_two_ends_on_its_weights_and_checkpoints(tmp_path, emt_file):
    from mlip.cli.train import train
    from tests.conftest import compose_train_config

    stage = ("stage_two={_target_: mlip.training.stage_two.StageTwo, start_epoch: 2, energy_weight: 50.0,"
             " forces_weight: 1.0, lr: 2.0e-4}")
    train(compose_train_config(tmp_path, emt_file, "trainer.max_epochs=4", stage))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert [g["lr"] for g in last["optimizer_states"][0]["param_groups"]] == pytest.approx([2e-4] * 2)
    assert last["callbacks"]["StageTwo"] == {"started": True}
    assert "mlip_plateau" not in last
    bests = sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert len(bests) == 2 and int(bests[0][11:14]) < 2 <= int(bests[1][11:14]), bests  # one of each stage


def test_a_resume_inside_stage_two_matches_an_uninterrupted_run(tmp_path, emt_file):
    from mlip.cli.train import train
    from tests.conftest import compose_train_config

    stage = ("stage_two={_target_: mlip.training.stage_two.StageTwo, start_epoch: 1, energy_weight: 50.0,"
             " forces_weight: 1.0, lr: 2.0e-4}")
    train(compose_train_config(tmp_path / "straight", emt_file, "trainer.max_epochs=3", stage))
    train(compose_train_config(tmp_path / "resumed", emt_file, "trainer.max_epochs=2", stage))
    train(compose_train_config(tmp_path / "resumed", emt_file, "trainer.max_epochs=3", stage, "resume=auto"))
    states = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
              for run in ("straight", "resumed")]
    assert states[0]["global_step"] == states[1]["global_step"]
    for key, value in states[0]["state_dict"].items():  # stage one's weights in the resumed epoch would differ
        assert torch.allclose(states[1]["state_dict"][key], value, rtol=1e-5, atol=1e-7), key
    best = [next(v["best_model_path"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val_loss'"))
            for state in states]
    assert best[0].split("/")[-1] == best[1].split("/")[-1]  # the resumed run chose the same epoch
