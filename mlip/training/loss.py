"""Weighted energy (per atom), force and stress loss, MSE or Huber.

    L = w_E ⟨ρ((E - Ê)/N)⟩_graphs + w_F ⟨ρ(F - F̂)⟩_components + w_S ⟨ρ(σ - σ̂)⟩_components

ρ is the square (``mse``) or the Huber function with threshold ``delta``. Each mean
runs only over entries that carry the label (``has_energy`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip.training.errors import label_errors


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class EnergyForcesStressLoss(nn.Module):
    def __init__(
        self,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        stress_weight: float = 0.0,
        kind: str = "mse",
        huber_delta: float = 0.01,
    ):
        super().__init__()
        if kind not in ("mse", "huber"):
            raise ValueError(f"loss kind must be 'mse' or 'huber', got {kind!r}")
        self.weights = {"energy": energy_weight, "forces": forces_weight, "stress": stress_weight}
        self.kind, self.huber_delta = kind, huber_delta

    def _rho(self, error: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return error**2
        return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=self.huber_delta)

    def forward(self, pred: dict[str, torch.Tensor], batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its weighted terms (only the terms with a non-zero weight)."""
        errors = label_errors(pred, batch)
        missing = [name for name, weight in self.weights.items() if weight and name not in errors]
        assert not missing, f"the loss weights {missing} but the prediction has only {sorted(pred)}"
        terms = {
            name: self.weights[name] * _masked_mean(self._rho(error), mask)
            for name, (error, mask) in errors.items()
            if self.weights[name]
        }
        total = sum(terms.values()) if terms else torch.zeros((), dtype=pred["energy"].dtype)
        return total, terms
