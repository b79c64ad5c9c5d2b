"""What a run logs beside its losses: throughput, GPU memory, validation parity plots, phase times."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from mlip.atomic import atomic_write_bytes
from mlip.evaluation.plots import parity_plot
from mlip.evaluation.scores import Predictions

log = logging.getLogger(__name__)


def logging_step(trainer) -> bool:
    """Whether Lightning writes this training step's logged values to the loggers (every
    ``log_every_n_steps``): values logged at other steps would only cost host time."""
    return trainer._logger_connector.should_update_logs


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the last training step's ``loss``, read from the GPU
    only when the bar redraws (every ``refresh_rate`` steps). A value logged with
    ``prog_bar=True`` would instead be read by Lightning at the end of every step after it was
    logged, each read a wait for the GPU (H200, 3BPA batch 10: 1.5 ms a step)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(pl_module, "last_train_loss", None)
        if trainer.training and loss is not None:
            metrics["loss"] = f"{float(loss):.4g}"
        return metrics


class Throughput(Callback):
    """Logs ``structures_per_s`` and ``atoms_per_s`` of training at each logging step, over the
    steps since the last one (this rank, between batch ends, so GPU work queued asynchronously
    is counted once it bounds the loop; validation and epoch ends left out), and on CUDA the
    peak GPU memory reserved so far, ``gpu_memory_gb`` (`peak_reserved_gb`: CUDA-graph pools included)."""

    def __init__(self):
        self._last: float | None = None
        self._structures = self._atoms = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = None  # validation and epoch ends are not training time

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is None:  # the first batch of an epoch starts the clock
            self._last, self._structures, self._atoms = now, 0, 0
            return
        self._structures += batch.num_graphs
        self._atoms += batch.num_nodes
        if not logging_step(trainer):
            return
        seconds = max(now - self._last, 1e-9)
        pl_module.log("structures_per_s", self._structures / seconds, on_step=True, on_epoch=False)
        pl_module.log("atoms_per_s", self._atoms / seconds, on_step=True, on_epoch=False)
        self._last, self._structures, self._atoms = now, 0, 0
        if pl_module.device.type == "cuda":
            pl_module.log("gpu_memory_gb", peak_reserved_gb(pl_module.device), on_step=True, on_epoch=False)


class ValidationParity(Callback):
    """A parity plot of each validation epoch (rank 0's share, up to ``max_atoms`` atoms):
    ``plots/val_parity_epochNNN.png`` in the run folder, and an image in the loggers that
    take one (wandb, TensorBoard); every ``every_n_epochs`` epochs (copying the predictions
    to the host and drawing cost about as much as a short validation)."""

    def __init__(self, dirpath: str | os.PathLike, max_atoms: int = 20000, every_n_epochs: int = 1):
        self.dirpath, self.max_atoms, self.every_n_epochs = Path(dirpath), max_atoms, max(int(every_n_epochs), 1)
        self._parts: list[dict[str, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._parts = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not outputs or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if sum(p["natoms"].sum() for p in self._parts) >= self.max_atoms:
            return
        graphs = int(batch.num_graphs)
        numpy = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        has_stress = numpy(batch.has_stress.view(-1)).astype(bool)
        stress_ref = numpy(batch.stress.view(graphs, 3, 3))
        stress_ref[~has_stress] = np.nan
        energy_ref = numpy(batch.energy.view(-1))
        energy_ref[~numpy(batch.has_energy.view(-1)).astype(bool)] = np.nan
        self._parts.append({
            "natoms": numpy(batch.natoms).astype(int), "numbers": numpy(batch.atomic_numbers).astype(int),
            "energy": numpy(outputs["energy"]), "energy_ref": energy_ref, "e0": numpy(outputs["e0_energy"]),
            "forces": numpy(outputs["forces"]), "forces_ref": numpy(batch.forces),
            "forces_mask": numpy(batch.forces_mask).astype(bool),
            "stress": numpy(outputs["stress"].view(graphs, 3, 3)), "stress_ref": stress_ref,
        })

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._parts or not trainer.is_global_zero:
            return
        joined = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        predictions = Predictions(sources=[], **joined)
        png = parity_plot(predictions, f"validation, epoch {trainer.current_epoch}")
        path = self.dirpath / f"val_parity_epoch{trainer.current_epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image("val_parity", [str(path)], step=trainer.global_step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                import matplotlib.image

                image = matplotlib.image.imread(str(path))[..., :3]
                logger.experiment.add_image("val_parity", image, trainer.global_step, dataformats="HWC")
        self._parts = []


class EpochSummary(Callback):
    """One line per epoch on the console when the progress bar is off (clusters, log files):
    epoch, training and validation loss, validation errors (meV units), learning rate, time."""

    UNITS = (("energy", "meV/atom"), ("forces", "meV/Å"), ("stress", "meV/Å³"))

    def __init__(self, always: bool = False):
        self.always = always
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs the epoch's validation before this hook, so its errors are current
        if not trainer.is_global_zero:
            return
        if trainer.progress_bar_callback is not None and not self.always:
            return
        print(self.line(trainer), flush=True)

    def line(self, trainer) -> str:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key, label in (("train_loss_epoch", "train_loss"), ("val_loss", "val_loss")):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.4g}")
        for quantity, unit in self.UNITS:
            if f"val_{quantity}_rmse" in metrics:
                parts.append(f"val {quantity} RMSE {1000 * metrics[f'val_{quantity}_rmse']:.2f} {unit}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        return "  ".join(parts)


def _capture_stats(pl_module) -> dict[str, float] | None:
    """The module's CUDA-graph capture totals, or None where it keeps none."""
    stats = getattr(pl_module, "graph_capture_stats", None)
    path = getattr(pl_module, "step_path", None)
    return None if stats is None or path is None or not path()[0] else stats()


def peak_reserved_gb(device: torch.device) -> float | None:
    """Peak GPU memory this process has reserved on ``device`` since the last reset, GB: what
    the caching allocator holds, the CUDA graphs' memory pools included (``allocated`` counts
    only the tensors alive outside them); None off CUDA."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / 1e9, 3)


class PhaseTimes(Callback):
    """Where a run's wall-clock goes: ``phase_times.json`` in ``dirpath`` (rank 0), rewritten at
    the end of the fit and of the test, with wall-clock timestamps (s since the epoch) of the
    fit start, the first epoch's start (after set-up and the sanity check), the end of the
    first training step, the test start and end, and per epoch the
    seconds of training and of validation with the number of optimiser steps, and, with
    ``module.cuda_graphs``, the padded sizes captured in that epoch (``graph_captures``; training
    steps and validation), the seconds they took (``graph_capture_s``, part of the epoch's) and
    the sizes evicted to make room (``graph_evictions``), and on CUDA the peak GPU memory the
    process reserved so far (``peak_reserved_gb``, per epoch and for the run: graph pools included). A run whose batches span more sizes
    than ``module.cuda_graph_buckets`` keeps recapturing; it is told so in the log, once per epoch.

    The GPU is synchronised at each phase boundary (a few times per epoch, never per step) so
    that queued work is charged to the phase that queued it.
    """

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.times: dict = {"epochs": []}
        self._mark = 0.0
        self._epoch: dict = {}
        self._graphs: dict | None = None  # capture totals at the epoch's start

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.time()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.times["fit_start"] = time.time()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = {"epoch": trainer.current_epoch, "steps": -trainer.global_step}
        self._graphs = _capture_stats(pl_module)
        self._mark = self._now(pl_module)
        self.times.setdefault("first_epoch_start", self._mark)  # after set-up and the sanity check

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "first_step_end" not in self.times:
            self.times["first_step_end"] = self._now(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._epoch:
            return
        now = self._now(pl_module)
        self._epoch.update(train_s=now - self._mark, steps=self._epoch["steps"] + trainer.global_step)
        self._mark = now

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "train_s" not in self._epoch:
            return
        self._epoch["validation_s"] = self._now(pl_module) - self._mark
        memory = peak_reserved_gb(pl_module.device)
        if memory is not None:
            self._epoch["peak_reserved_gb"] = memory
        graphs = _capture_stats(pl_module)
        if graphs is not None and self._graphs is not None:
            delta = {key: graphs[key] - self._graphs[key] for key in graphs}
            self._epoch.update(graph_captures=delta["captures"], graph_capture_s=round(delta["capture_s"], 3),
                               graph_evictions=delta["evictions"])
            if delta["evictions"] and trainer.is_global_zero:
                log.warning(
                    "epoch %d: %d padded batch sizes captured as CUDA graphs (%.1f s of the epoch) and %d dropped "
                    "to keep %d: the batches span more sizes than are kept, so sizes are captured again and again. "
                    "Keep more (module.cuda_graph_buckets=%d) if GPU memory allows, or batch to a steadier size "
                    "(data.max_atoms / data.max_edges).",
                    trainer.current_epoch, delta["captures"], delta["capture_s"], delta["evictions"],
                    pl_module.hparams.cuda_graph_buckets, 2 * pl_module.hparams.cuda_graph_buckets,
                )
        self.times["epochs"].append(self._epoch)
        self._epoch = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.times["fit_end"] = self._now(pl_module)
        self._write(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self.times["test_start"] = self._now(pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self.times["test_end"] = self._now(pl_module)
        self._write(trainer)

    def _write(self, trainer) -> None:
        module = getattr(trainer, "lightning_module", None)
        memory = peak_reserved_gb(module.device) if module is not None else None
        if memory is not None:
            self.times["peak_reserved_gb"] = memory
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.dirpath / "phase_times.json", json.dumps(self.times, indent=1).encode())
