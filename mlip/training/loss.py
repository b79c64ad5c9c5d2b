"""Weighted energy (per atom), force and stress loss, MSE or Huber.

    L = w_E ⟨ρ((E - Ê)/N)⟩_graphs + w_F ⟨ρ(F - F̂)⟩_components + w_S ⟨ρ(σ - σ̂)⟩_components

ρ is the square (``mse``) or the Huber function with threshold ``delta``. Each mean
runs only over entries that carry the label (``has_energy`` ...). A batch with a ``weight``
per structure (fine-tuning's replay structures) weighs each structure's entries by it; the
means still divide by the number of labelled entries.

Under data parallelism each rank holds part of the batch. With ``sum_over_ranks`` (an
all-reduce sum) the denominators are the counts of the whole global batch, and each
rank's term is scaled by the world size, so DDP's gradient average equals the gradient
of the single-process loss on the global batch, up to summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlip.training.errors import label_errors


TERMS = ("energy", "forces", "stress")
ENTRIES = {"energy": 1, "forces": 3, "stress": 9}  # loss entries per labelled graph / atom / graph


def label_counts(batch, names: list[str]) -> torch.Tensor:
    """How many labelled entries each term in ``names`` averages over: [len(names)] (int)."""
    masks = {"energy": batch.has_energy, "forces": batch.forces_mask, "stress": batch.has_stress}
    return torch.stack([ENTRIES[name] * masks[name].sum() for name in names])


def structure_weights(batch, errors: dict) -> dict[str, torch.Tensor] | None:
    """Each structure's loss weight (a batch's ``weight`` [G]: replay structures of fine-tuning),
    shaped to broadcast against each term's error; None when the batch carries none."""
    weight = getattr(batch, "weight", None)
    if weight is None:
        return None
    nodes = getattr(batch, "batch", None)
    if nodes is None:  # one graph, not a batch
        nodes = torch.zeros(batch.num_nodes, dtype=torch.long, device=weight.device)
    shapes = {"energy": weight, "forces": weight.index_select(0, nodes)[:, None], "stress": weight[:, None, None]}
    return {name: shapes[name].to(errors[name][0].dtype) for name in errors}


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

    def term_names(self, predicted) -> list[str]:
        """The terms of the loss: those with a weight, among the quantities ``predicted``."""
        return [name for name in TERMS if self.weights[name] and name in predicted]

    def _rho(self, error: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return error**2
        return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=self.huber_delta)

    def forward(
        self, pred: dict[str, torch.Tensor], batch, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its weighted terms (only the terms with a non-zero weight).

        ``sum_over_ranks``/``world_size``: normalise by the global batch's counts (module docstring).
        """
        errors = label_errors(pred, batch)
        missing = [name for name, weight in self.weights.items() if weight and name not in errors]
        assert not missing, f"the loss weights {missing} but the prediction has only {sorted(pred)}"
        names = self.term_names(errors)
        weights = structure_weights(batch, errors)
        sums = {}
        for name in names:
            error, mask = errors[name]
            weighted = mask.to(error.dtype) if weights is None else mask.to(error.dtype) * weights[name]
            sums[name] = (self._rho(error) * weighted).sum()
        dtype = pred["energy"].dtype
        counts = dict(zip(names, label_counts(batch, names).to(dtype))) if names else {}
        if sum_over_ranks is not None and counts:
            global_counts = sum_over_ranks(torch.stack(list(counts.values())).detach())  # one all-reduce
            counts = {name: count / world_size for name, count in zip(counts, global_counts)}
        terms = {name: self.weights[name] * sums[name] / counts[name].clamp(min=1.0 / world_size) for name in sums}
        total = sum(terms.values()) if terms else torch.zeros((), dtype=pred["energy"].dtype)
        return total, terms
