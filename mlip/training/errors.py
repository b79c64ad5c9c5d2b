"""Prediction errors against the labels of a batch, with the mask of labelled entries.

One definition shared by the loss and the metrics: energy per atom (eV/atom) [G],
forces per component (eV/Å) [n, 3], stress per component (eV/Å³) [G, 3, 3].
"""

from __future__ import annotations

import torch


def label_errors(pred: dict[str, torch.Tensor], batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{quantity: (prediction - label, mask)}`` for each quantity present in ``pred``.

    The mask broadcasts against the error and is False where the entry has no label.
    """
    errors = {}
    if "energy" in pred:
        natoms = batch.natoms.to(pred["energy"].dtype)
        if "e0_energy" in pred:
            # the interaction energy against the label less Σ E0, taken in float64: the float32
            # totals (~1e4 eV for a molecule) would round both sides by about a meV (`Potential`)
            label = (batch.energy.to(torch.float64) - pred["e0_energy"]).to(natoms.dtype)
            errors["energy"] = ((pred["interaction_energy"] - label) / natoms, batch.has_energy)
        else:
            errors["energy"] = ((pred["energy"] - batch.energy.to(natoms.dtype)) / natoms, batch.has_energy)
    if "forces" in pred:
        errors["forces"] = (pred["forces"] - batch.forces.to(pred["forces"].dtype), batch.forces_mask[:, None])
    if "stress" in pred:
        label = batch.stress.to(pred["stress"].dtype).view(-1, 3, 3)
        errors["stress"] = (pred["stress"] - label, batch.has_stress[:, None, None])
    return errors
