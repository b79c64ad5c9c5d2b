"""PhaseTimes: where a run's time goes, CUDA-graph captures per epoch included (stand-ins on
the CPU); the progress bar reads the step loss only when it redraws."""

import json
import logging
from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.parsing import AttributeDict

from mlip.cli.train import train
from mlip.training.monitoring import PhaseTimes
from tests.conftest import compose_train_config


class ProgressBarProbe(Callback):
    """Records, after each training step, the values Lightning converts for the progress bar."""

    seen: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ProgressBarProbe.seen.append(set(trainer.progress_bar_metrics))


def test_the_progress_bar_shows_the_loss_without_lightning_reading_it_every_step(tmp_path, emt_file, capsys):
    """Lightning reads every ``prog_bar`` value from the device at every step's end (on a GPU, a
    wait per step); the step loss reaches the bar through `ProgressBar` at its redraws instead."""
    ProgressBarProbe.seen = []
    cfg = compose_train_config(tmp_path, emt_file, "trainer.enable_progress_bar=true", "trainer.log_every_n_steps=1",
                               "+monitoring.probe._target_=tests.training.test_monitoring.ProgressBarProbe")
    train(cfg)
    assert len(ProgressBarProbe.seen) == 16 and not any("train_loss_step" in keys for keys in ProgressBarProbe.seen)
    assert "loss=" in capsys.readouterr().out  # Lightning's bar writes to stdout


def _epoch(callback, trainer, module, totals, captured: dict) -> None:
    """One training epoch and its validation, during which the module captured ``captured``."""
    callback.on_train_epoch_start(trainer, module)
    trainer.global_step += 5
    for key, value in captured.items():
        totals[key] += value
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_epoch_end(trainer, module)
    trainer.current_epoch += 1


def test_phase_times_reports_each_epochs_captures_and_warns_when_sizes_are_dropped(tmp_path, caplog):
    totals = {"captures": 0, "evictions": 0, "capture_s": 0.0}
    module = SimpleNamespace(device=torch.device("cpu"), hparams=AttributeDict(cuda_graphs=True, cuda_graph_buckets=4),
                             graph_capture_stats=lambda: dict(totals), step_path=lambda: (True, "test"))
    trainer = SimpleNamespace(current_epoch=0, global_step=0, sanity_checking=False, is_global_zero=True)
    callback = PhaseTimes(tmp_path)
    callback.on_fit_start(trainer, module)
    with caplog.at_level(logging.WARNING, logger="mlip.training.monitoring"):
        _epoch(callback, trainer, module, totals, {"captures": 4, "capture_s": 8.0})  # the first sizes
        assert not caplog.records
        _epoch(callback, trainer, module, totals, {"captures": 3, "evictions": 3, "capture_s": 6.5})  # dropped, again
    assert len(caplog.records) == 1 and "epoch 1: 3 padded batch sizes" in caplog.text
    assert "module.cuda_graph_buckets=8" in caplog.text
    callback.on_fit_end(trainer, module)
    epochs = json.loads((tmp_path / "phase_times.json").read_text())["epochs"]
    assert [(e["steps"], e["graph_captures"], e["graph_evictions"], e["graph_capture_s"]) for e in epochs] == [
        (5, 4, 0, 8.0), (5, 3, 3, 6.5)]


def test_phase_times_reports_no_captures_without_cuda_graphs(tmp_path):
    module = SimpleNamespace(device=torch.device("cpu"), hparams=AttributeDict(cuda_graphs=False),
                             graph_capture_stats=lambda: {"captures": 0, "evictions": 0, "capture_s": 0.0},
                             step_path=lambda: (False, "test"))
    trainer = SimpleNamespace(current_epoch=0, global_step=0, sanity_checking=False, is_global_zero=True)
    callback = PhaseTimes(tmp_path)
    _epoch(callback, trainer, module, {"captures": 0, "evictions": 0, "capture_s": 0.0}, {})
    callback.on_fit_end(trainer, module)
    assert "graph_captures" not in json.loads((tmp_path / "phase_times.json").read_text())["epochs"][0]
