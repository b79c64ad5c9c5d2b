"""Per-quantity MAE and RMSE accumulated over an epoch (and across processes).

Energy errors are per atom (eV/atom), force errors per Cartesian component (eV/Å),
stress errors per tensor component (eV/Å³); every mean runs over labelled entries
only, summed over batches before dividing, so batch sizes do not bias it.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from mlip.training.errors import label_errors


class ErrorMetric(Metric):
    """Accumulates |error| and error² over labelled entries; computes MAE and RMSE."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("abs_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sq_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, error: torch.Tensor, mask: torch.Tensor) -> None:
        error = error.detach().to(torch.float64)
        mask = mask.to(torch.float64).expand_as(error)
        self.abs_sum += (error.abs() * mask).sum()
        self.sq_sum += (error**2 * mask).sum()
        self.count += mask.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1.0)
        return {"mae": self.abs_sum / count, "rmse": torch.sqrt(self.sq_sum / count)}


class PotentialMetrics(torch.nn.Module):
    """MAE/RMSE of energy per atom, forces and stress for one stage (val or test)."""

    QUANTITIES = ("energy", "forces", "stress")

    def __init__(self) -> None:
        super().__init__()
        self.errors = torch.nn.ModuleDict({q: ErrorMetric() for q in self.QUANTITIES})

    def update(self, pred: dict[str, torch.Tensor], batch) -> None:
        for name, (error, mask) in label_errors(pred, batch).items():
            self.errors[name].update(error, mask)

    def compute(self) -> dict[str, float]:
        """``{"energy_mae": ..., "forces_rmse": ...}`` for the quantities that had labels."""
        out = {}
        for q, metric in self.errors.items():
            if float(metric.count) > 0:
                for name, value in metric.compute().items():
                    out[f"{q}_{name}"] = float(value)
        return out

    def reset(self) -> None:
        for metric in self.errors.values():
            metric.reset()
