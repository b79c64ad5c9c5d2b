"""Atomic graphs: a `Structure` plus the edges of a periodic radius neighbour list.

Edge convention (shared by every model): ``edge_index[0]`` is the sender j (the
neighbour), ``edge_index[1]`` the receiver i (the centre), and the edge vector
``r_ij = positions[j] - positions[i] + shifts @ cell`` points from i to j.
``shifts`` holds the integer lattice-image offsets, stored as floats so that the
model can rebuild edge vectors from a strained cell (stress by autograd).
"""

from __future__ import annotations

import numpy as np
import torch
import vesin
from torch_geometric.data import Data

from mlip.data.structure import Structure


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j) closer than ``cutoff`` Å, including periodic images.

    Returns ``edge_index`` [2, n_edges] as (sender j, receiver i) and integer
    ``shifts`` [n_edges, 3] with ``r_ij = x_j - x_i + shifts @ cell``.
    """
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(
        np.ascontiguousarray(positions, dtype=np.float64), box, pbc.tolist(), quantities="ijS"
    )
    edge_index = np.stack([j, i]).astype(np.int64)
    return edge_index, np.asarray(shifts, dtype=np.int64).reshape(-1, 3)


class AtomicGraph(Data):
    """A torch_geometric `Data` with mlip's key names; batches with torch_geometric.

    Keys: positions [n, 3] Å, atomic_numbers [n], cell [1, 3, 3] Å, pbc [1, 3],
    edge_index [2, E], shifts [E, 3], natoms [1], energy [1] eV, forces [n, 3] eV/Å,
    stress [1, 3, 3] eV/Å³, and has_energy / has_forces / has_stress [1] bool
    masks (unlabelled entries hold zeros).
    """


def structure_to_graph(structure: Structure, cutoff: float) -> AtomicGraph:
    """Build the `AtomicGraph` of a structure with a radius-``cutoff`` neighbour list (float64)."""
    n = structure.n_atoms
    edge_index, shifts = neighbour_list(structure.positions, structure.cell, structure.pbc, cutoff)
    f64 = torch.float64
    graph = AtomicGraph(
        positions=torch.tensor(structure.positions, dtype=f64),
        atomic_numbers=torch.tensor(structure.atomic_numbers, dtype=torch.long),
        cell=torch.tensor(structure.cell, dtype=f64).view(1, 3, 3),
        pbc=torch.tensor(structure.pbc, dtype=torch.bool).view(1, 3),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts).to(f64),
        natoms=torch.tensor([n], dtype=torch.long),
        energy=torch.tensor([structure.energy if structure.energy is not None else 0.0], dtype=f64),
        forces=torch.tensor(structure.forces, dtype=f64) if structure.forces is not None else torch.zeros(n, 3, dtype=f64),
        stress=(
            torch.tensor(structure.stress, dtype=f64).view(1, 3, 3)
            if structure.stress is not None
            else torch.zeros(1, 3, 3, dtype=f64)
        ),
        has_energy=torch.tensor([structure.energy is not None]),
        has_forces=torch.tensor([structure.forces is not None]),
        has_stress=torch.tensor([structure.stress is not None and structure.is_periodic]),
    )
    graph.num_nodes = n
    return graph
