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
    """MAE/RMSE of energy per atom, forces and stress for one stage (val or test).

    With ``heads`` (a multi-head model's names) the errors are also kept per head, each structure
    under the head its batch names (``head`` [G]): ``{head}_forces_rmse`` beside ``forces_rmse``.
    """

    QUANTITIES = ("energy", "forces", "stress")

    def __init__(self, heads: list[str] | None = None) -> None:
        super().__init__()
        self.errors = torch.nn.ModuleDict({q: ErrorMetric() for q in self.QUANTITIES})
        self.heads = list(heads or []) if heads and len(heads) > 1 else []
        self.head_errors = torch.nn.ModuleList(
            torch.nn.ModuleDict({q: ErrorMetric() for q in self.QUANTITIES}) for _ in self.heads)

    def update(self, pred: dict[str, torch.Tensor], batch) -> None:
        errors = label_errors(pred, batch)
        for name, (error, mask) in errors.items():
            self.errors[name].update(error, mask)
        heads = getattr(batch, "head", None) if self.heads else None
        if heads is None:
            return
        heads = heads.view(-1)
        for index, metrics in enumerate(self.head_errors):
            of_head = heads == index  # [G]
            for name, (error, mask) in errors.items():
                selected = of_head.index_select(0, batch.batch) if name == "forces" else of_head
                selected = selected.view(-1, *([1] * (mask.dim() - 1)))
                metrics[name].update(error, mask & selected)

    def compute(self) -> dict[str, float]:
        """``{"energy_mae": ..., "forces_rmse": ...}`` for the quantities that had labels (and per
        head, ``{"foundation_forces_rmse": ...}``, for the heads that had structures)."""
        out = {}
        for prefix, errors in [("", self.errors), *((f"{h}_", m) for h, m in zip(self.heads, self.head_errors))]:
            for q, metric in errors.items():
                if float(metric.count) > 0:
                    for name, value in metric.compute().items():
                        out[f"{prefix}{q}_{name}"] = float(value)
        return out

    def reset(self) -> None:
        for errors in [self.errors, *self.head_errors]:
            for metric in errors.values():
                metric.reset()
