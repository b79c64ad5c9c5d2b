"""Parity plots, error histograms and learning curves as PNG bytes (matplotlib's object API: no pyplot state)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mlip.evaluation.scores import Predictions


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _panels(p: Predictions) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, prediction, reference) of each labelled quantity, flattened."""
    panels = []
    labelled = np.isfinite(p.energy_ref)
    if labelled.any():
        panels.append(("energy (eV/atom)", p.energy[labelled] / p.natoms[labelled],
                       p.energy_ref[labelled] / p.natoms[labelled]))
    if p.forces_mask.any():
        panels.append(("force component (eV/Å)", p.forces[p.forces_mask].ravel(), p.forces_ref[p.forces_mask].ravel()))
    has_stress = np.isfinite(p.stress_ref).all(axis=(1, 2))
    if has_stress.any():
        panels.append(("stress component (eV/Å³)", p.stress[has_stress].ravel(), p.stress_ref[has_stress].ravel()))
    return panels


def parity_plot(p: Predictions, title: str) -> bytes:
    """Predicted against reference, one panel per labelled quantity, with MAE in each."""
    panels = _panels(p)
    figure = Figure(figsize=(4.6 * max(len(panels), 1), 4.2), layout="constrained")
    for k, (label, pred, ref) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.scatter(ref, pred, s=4, alpha=0.5, linewidths=0)
        low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([low, high], [low, high], color="k", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(f"MAE {np.abs(pred - ref).mean():.3g}")
        ax.set_aspect("equal", adjustable="datalim")
    figure.suptitle(title)
    return _png(figure)


def error_histogram(p: Predictions, title: str) -> bytes:
    """Histograms of the errors (prediction − reference), one panel per labelled quantity, log counts."""
    panels = _panels(p)
    figure = Figure(figsize=(4.6 * max(len(panels), 1), 3.6), layout="constrained")
    for k, (label, pred, ref) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.hist(pred - ref, bins=60, log=True)
        ax.set_xlabel(f"error, {label}")
        ax.set_ylabel("count")
    figure.suptitle(title)
    return _png(figure)


def learning_curve(metrics_csv: str | Path) -> bytes:
    """Loss per epoch (training and validation) and validation force RMSE (meV/Å) from a run's
    ``logs/metrics.csv`` (Lightning's CSV logger: one row per logged step or epoch)."""
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def series(key: str) -> tuple[list[int], list[float]]:
        points = sorted((int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, ""))
        return [e for e, _ in points], [v for _, v in points]

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    losses, forces = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for key in ("train_loss_epoch", "val_loss"):
        epochs, values = series(key)
        if epochs:
            losses.semilogy(epochs, values, marker="o", ms=3, label=key)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.legend()
    epochs, values = series("val_forces_rmse")
    forces.plot(epochs, [1000 * v for v in values], marker="o", ms=3)
    forces.set_xlabel("epoch")
    forces.set_ylabel("validation force RMSE (meV/Å)")
    return _png(figure)
