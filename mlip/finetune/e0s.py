"""The E0s of a fine-tuned model (``data.e0s``).

- an isolated-atom file or a mapping element -> eV: those, as for any run;
- ``foundation``: the model file's own;
- ``estimated``: the foundation's, each corrected by the least-squares per-element constant
  that best explains the foundation's energy error on the training set,
  δ = argmin Σ_s (E_s - Ê_s - Σ_z n_{s,z} δ_z)², E0 = E0_foundation + δ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.statistics import fit_e0s
from mlip.data.structure import DataError
from mlip.models.potential import Potential

MODES = ("foundation", "estimated")


@torch.no_grad()
def predicted_energies(potential: Potential, graphs: Sequence, batch_size: int = 16) -> np.ndarray:
    """The potential's total energies (eV) of ``graphs``, on the potential's device: [len(graphs)]."""
    device = potential.e0s.device
    energies = []
    for start in range(0, len(graphs), batch_size):
        batch = Batch.from_data_list(list(graphs[start : start + batch_size])).to(device)
        energies.append(potential(batch, compute_forces=False)["energy"].double().cpu().numpy())
    return np.concatenate(energies) if energies else np.zeros(0)


def estimated_e0s(potential: Potential, structures: Sequence) -> np.ndarray:
    """The foundation's E0s plus the per-element least-squares correction of its energy error on
    the energy-labelled ``structures``: [len(potential.elements)] eV."""
    labelled = [k for k, s in enumerate(structures) if s.energy is not None]
    if not labelled:
        raise DataError("data.e0s=estimated: no training structure has an energy label")
    elements = potential.elements.tolist()
    graphs = [structure_to_graph(structures[k], potential.r_max) for k in labelled]
    predicted = predicted_energies(potential, graphs)
    error = np.array([structures[k].energy for k in labelled]) - predicted
    counts = np.stack([np.bincount([elements.index(int(z)) for z in structures[k].atomic_numbers],
                                   minlength=len(elements)) for k in labelled]).astype(np.float64)
    delta = fit_e0s(counts.T @ counts, counts.T @ error)
    return potential.e0s.detach().double().cpu().numpy() + delta


def set_e0s(potential: Potential, e0s: Sequence[float], head: str | None = None) -> None:
    """Make ``e0s`` (eV, aligned with ``potential.elements``) those of ``head`` (of a multi-head
    potential; default the selected one), and the predicted ones if that head is selected."""
    values = torch.as_tensor(np.asarray(e0s, dtype=np.float64), dtype=torch.float64, device=potential.e0s.device)
    with torch.no_grad():
        if potential.heads:
            name = head or potential.head
            potential.head_e0s[potential.heads.index(name)].copy_(values)
            if name != potential.head:
                return
        potential.e0s.copy_(values)
