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
    cfg = compose_train_config(tmp_path, emt_file, "trainer.max_epochs=2", TARGET, "+module.loss.nan_steps=[3,4,11]")
    with caplog.at_level(logging.WARNING, logger="mlip.training.module"):
        metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == 3 and "3 skipped so far, 1 in a row" in warnings[-1]
    state = _state(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 16  # a skipped step moves nothing but counts, so schedules go on
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert state["state_dict"]["ema.num_updates"] == 16 - 3


def test_too_many_in_a_row_stop_with_the_last_good_weights(tmp_path, emt_file):
    cfg = compose_train_config(tmp_path, emt_file, "trainer.max_epochs=2", TARGET, "+module.loss.nan_from=5",
                               "module.max_nonfinite_steps=3", "step_checkpoint.every_n_train_steps=1")
    with pytest.raises(NonFiniteLossError, match=r"3 training steps in a row had a non-finite loss.*nonfinite-stop"):
        train(cfg)
    stopped = _state(tmp_path / "checkpoints" / NONFINITE_CHECKPOINT)
    # step.ckpt is written after every step; the skipped ones moved nothing, so it holds step 5's weights
    last_good = _state(tmp_path / "checkpoints" / "step.ckpt")
    assert stopped["global_step"] == last_good["global_step"] == 7
    assert stopped["state_dict"]["ema.num_updates"] == 5
    for key, value in last_good["state_dict"].items():
        torch.testing.assert_close(stopped["state_dict"][key], value, rtol=0, atol=0, msg=key)
