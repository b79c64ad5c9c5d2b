"""Non-finite training steps: skipped and counted; too many in a row stop the run with the last good weights."""

import logging

import pytest
import torch

from mlip.cli.train import train
from mlip.training.loss import EnergyForcesStressLoss
from mlip.training.module import NONFINITE_CHECKPOINT, NonFiniteLossError
from tests.conftest import compose_train_config

# 32 training structures in batches of 4: 8 steps per epoch
TARGET = "module.loss._target_=tests.training.test_nonfinite.NaNOnSteps"


class NaNOnSteps(EnergyForcesStressLoss):
    """The training loss, made NaN on the given training calls (0-based); from ``nan_from`` on, always."""

    def __init__(self, *args, nan_steps=(), nan_from=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_steps, self.nan_from, self.calls = set(nan_steps), nan_from, 0

    def forward(self, pred, batch):
        loss, terms = super().forward(pred, batch)
        if loss.requires_grad:  # training, not validation
            call, self.calls = self.calls, self.calls + 1
            if call in self.nan_steps or (self.nan_from is not None and call >= self.nan_from):
                loss = loss * float("nan")
        return loss, terms


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, emt_file, caplog):
    cfg = compose_train_config(tmp_path, emt_file, "trainer.max_epochs=2", TARGET, "+module.loss.nan_steps=[3,4,11]",
                               "module.nonfinite_check_every=4")
    with caplog.at_level(logging.WARNING, logger="mlip.training.module"):
        metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # read every 4 steps: steps 4 and 5 (calls 3, 4) in the first stretch, step 12 (call 11) in the third
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert warnings == ["steps 1-4: 1 with a non-finite loss or gradient skipped (1 skipped so far, 1 in a row)",
                        "steps 5-8: 1 with a non-finite loss or gradient skipped (2 skipped so far, 0 in a row)",
                        "steps 9-12: 1 with a non-finite loss or gradient skipped (3 skipped so far, 1 in a row)"]
    state = _state(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 16  # a skipped step moves nothing but counts, so schedules go on
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert state["state_dict"]["ema.num_updates"] == 16 - 3


@pytest.mark.parametrize("check_every,in_a_row", [(1, 2), (3, 3)])
def test_too_many_in_a_row_stop_with_the_last_good_weights(tmp_path, emt_file, check_every, in_a_row):
    """Steps 6 on (calls 5 on) are NaN; the counters are read every ``check_every`` steps and at
    the epoch end (step 8), so the stop comes at the first read with 2 or more in a row, and
    every step since the last good one moved nothing."""
    cfg = compose_train_config(tmp_path, emt_file, "trainer.max_epochs=2", TARGET, "+module.loss.nan_from=5",
                               "module.max_nonfinite_steps=2", "step_checkpoint.every_n_train_steps=1",
                               f"module.nonfinite_check_every={check_every}")
    with pytest.raises(NonFiniteLossError, match=rf"{in_a_row} training steps in a row had a non-finite loss.*nonfinite-stop"):
        train(cfg)
    stopped = _state(tmp_path / "checkpoints" / NONFINITE_CHECKPOINT)
    # step.ckpt is written after every step (the last one before the stop); the skipped ones
    # moved nothing, so both hold step 5's weights, optimiser state and EMA
    last_good = _state(tmp_path / "checkpoints" / "step.ckpt")
    assert stopped["global_step"] >= last_good["global_step"] >= 6  # both after the last good step, 5
    assert stopped["state_dict"]["ema.num_updates"] == 5
    for key, value in last_good["state_dict"].items():
        torch.testing.assert_close(stopped["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for theirs, ours in zip(last_good["optimizer_states"][0]["state"].values(),
                            stopped["optimizer_states"][0]["state"].values()):
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("clip", [1e-3, 1e3])  # always clipped / never clipped
def test_clipping_with_the_checked_norm_equals_lightnings(tmp_path, emt_file, monkeypatch, clip):
    """The module clips with the gradient norm of its finite check: the weights after training
    equal those of Lightning's own clipping (torch.nn.utils.clip_grad_norm_), in float64 (the
    two sum the per-tensor norms in another order)."""
    from lightning.pytorch import LightningModule

    from mlip.training.module import PotentialModule

    def weights(folder, reference):
        if reference:
            monkeypatch.setattr(PotentialModule, "configure_gradient_clipping",
                                LightningModule.configure_gradient_clipping)
        train(compose_train_config(tmp_path / folder, emt_file, "trainer.max_epochs=1", "dtype=float64",
                                   f"trainer.gradient_clip_val={clip}"))
        monkeypatch.undo()
        return _state(tmp_path / folder / "checkpoints" / "last.ckpt")["state_dict"]

    ours, lightnings = weights("ours", False), weights("reference", True)
    assert ours.keys() == lightnings.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], lightnings[name], rtol=1e-10, atol=1e-12, msg=name)
