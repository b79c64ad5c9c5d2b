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
        errors["energy"] = ((pred["energy"] - batch.energy.to(natoms.dtype)) / natoms, batch.has_energy)
    if "forces" in pred:
        errors["forces"] = (pred["forces"] - batch.forces.to(pred["forces"].dtype), batch.forces_mask[:, None])
    if "stress" in pred:
        label = batch.stress.to(pred["stress"].dtype).view(-1, 3, 3)
        errors["stress"] = (pred["stress"] - label, batch.has_stress[:, None, None])
    return errors
