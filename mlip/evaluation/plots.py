"""Parity plots, error histograms and learning curves as PNG bytes (matplotlib's object API: no
pyplot state; matplotlib is imported when a plot is drawn). Errors in meV units, as the tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from mlip.evaluation.scores import Predictions


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _panels(p: Predictions) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(quantity, unit, prediction, reference) of each labelled quantity, flattened, in meV units
    (as the tables): the energy per atom as the interaction energy (E - ΣE0)/N where the E0s
    are known (the totals are dominated by the reference energies), else the total per atom."""
    panels = []
    labelled = np.isfinite(p.energy_ref)
    if labelled.any():
        offset = p.e0[labelled] if p.e0 is not None else 0.0
        name = "interaction energy" if p.e0 is not None else "energy"
        n = p.natoms[labelled]
        panels.append((name, "meV/atom", 1e3 * (p.energy[labelled] - offset) / n,
                       1e3 * (p.energy_ref[labelled] - offset) / n))
    if p.forces_mask.any():
        panels.append(("force component", "meV/Å", 1e3 * p.forces[p.forces_mask].ravel(),
                       1e3 * p.forces_ref[p.forces_mask].ravel()))
    has_stress = np.isfinite(p.stress_ref).all(axis=(1, 2))
    if has_stress.any():
        panels.append(("stress component", "meV/Å³", 1e3 * p.stress[has_stress].ravel(),
                       1e3 * p.stress_ref[has_stress].ravel()))
    return panels


def _summary(pred: np.ndarray, ref: np.ndarray, unit: str) -> str:
    """``N 1234 · MAE 1.23 · RMSE 2.34 meV/Å``."""
    errors = pred - ref
    return (f"N {errors.size:,} · MAE {np.abs(errors).mean():.3g} · RMSE {np.sqrt(np.mean(errors ** 2)):.3g} {unit}")


def parity_plot(p: Predictions, title: str, groups: list | None = None) -> bytes:
    """Predicted against reference, one panel per labelled quantity, each titled with N, MAE and
    RMSE; ``groups`` (a label per structure, e.g. its config_type) colours the points by group."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from mlip.evaluation.scores import subset

    panels = _panels(p)
    labels = list(dict.fromkeys(groups)) if groups is not None else [None]
    figure = Figure(figsize=(4.6 * max(len(panels), 1), 4.4), layout="constrained")
    axes = {}
    for k, (name, unit, pred, ref) in enumerate(panels):
        ax = axes[name] = figure.add_subplot(1, len(panels), k + 1)
        low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([low, high], [low, high], color="k", lw=0.8)
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"predicted {name} ({unit})")
        ax.set_title(_summary(pred, ref, unit), fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
    for label in labels:
        part = p if label is None else subset(p, np.flatnonzero(np.array(groups, dtype=object) == label))
        for name, _, pred, ref in _panels(part):
            axes[name].scatter(ref, pred, s=4, alpha=0.5, linewidths=0, label=None if label is None else str(label))
    if len(labels) > 1:
        for ax in axes.values():
            ax.legend(fontsize=7, markerscale=3, loc="upper left")
    figure.suptitle(title)
    return _png(figure)


def error_histogram(p: Predictions, title: str) -> bytes:
    """Histograms of the errors (prediction − reference), one panel per labelled quantity, log counts."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = _panels(p)
    figure = Figure(figsize=(4.6 * max(len(panels), 1), 3.8), layout="constrained")
    for k, (name, unit, pred, ref) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.hist(pred - ref, bins=60, log=True)
        ax.set_xlabel(f"error, {name} ({unit})")
        ax.set_ylabel("count")
        ax.set_title(_summary(pred, ref, unit), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))  # few ticks: long labels do not overlap
    figure.suptitle(title)
    return _png(figure)


def learning_curve(metrics_csv: str | Path) -> bytes:
    """Loss per epoch (training and validation) and validation force RMSE (meV/Å) from a run's
    ``logs/metrics.csv`` (Lightning's CSV logger: one row per logged step or epoch)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def series(key: str) -> tuple[list[int], list[float]]:
        """Values of ``key`` by epoch, counted from 1 as the console counts them."""
        points = sorted((int(r["epoch"]) + 1, float(r[key])) for r in rows if r.get(key) not in (None, ""))
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
    # one line per head of a multi-head fine-tuning (val_<head>_forces_rmse), else the whole set's
    keys = sorted(k for k in (rows[0] if rows else {}) if k.startswith("val_") and k.endswith("_forces_rmse")
                  and k != "val_forces_rmse")
    for key in keys or ["val_forces_rmse"]:
        epochs, values = series(key)
        label = key.removeprefix("val_").removesuffix("_forces_rmse") + " head" if keys else None
        forces.plot(epochs, [1000 * v for v in values], marker="o", ms=3, label=label)
    if keys:
        forces.legend()
    forces.set_xlabel("epoch")
    forces.set_ylabel("validation force RMSE (meV/Å)")
    for ax in (losses, forces):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    return _png(figure)
