"""PhaseTimes: where a run's time goes, CUDA-graph captures per epoch included (stand-ins on the CPU)."""

import json
import logging
from types import SimpleNamespace

import torch
from lightning.pytorch.utilities.parsing import AttributeDict

from mlip.training.monitoring import PhaseTimes


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
                             graph_capture_stats=lambda: dict(totals))
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
                             graph_capture_stats=lambda: {"captures": 0, "evictions": 0, "capture_s": 0.0})
    trainer = SimpleNamespace(current_epoch=0, global_step=0, sanity_checking=False, is_global_zero=True)
    callback = PhaseTimes(tmp_path)
    _epoch(callback, trainer, module, {"captures": 0, "evictions": 0, "capture_s": 0.0}, {})
    callback.on_fit_end(trainer, module)
    assert "graph_captures" not in json.loads((tmp_path / "phase_times.json").read_text())["epochs"][0]
