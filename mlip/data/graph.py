"""Atomic graphs: a structure's arrays plus the edges of a periodic radius neighbour list.

Edge convention (shared by every model): ``edge_index[0]`` is the sender j (the
neighbour), ``edge_index[1]`` the receiver i (the centre), and the edge vector
``r_ij = positions[j] - positions[i] + shifts @ cell`` points from i to j.
``shifts`` holds the integer lattice-image offsets, stored as floats so that the
model can rebuild edge vectors from a strained cell (stress by autograd).

Edges are built either per structure on the CPU (`neighbour_list`, vesin; in the
DataLoader workers) or for a whole batch on its device (`add_batch_edges`,
vesin-torch; on the GPU after the transfer). Both give the same set of edges.
"""

from __future__ import annotations

import numpy as np
import torch
import vesin
from torch_geometric.data import Data

from mlip.data.checks import MIN_DISTANCE, check_overlaps
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
    stress [1, 3, 3] eV/Å³, tags [n], fixed [n] bool, the label masks has_energy [1],
    has_stress [1] and forces_mask [n] (False for unlabelled atoms, and for fixed
    atoms when their constraint forces are left out), all unlabelled entries zeros.
    """


def make_graph(
    positions: np.ndarray,
    atomic_numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    energy: float | None = None,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    tags: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
    cutoff: float | None = None,
    fixed_atom_forces: bool = True,
) -> AtomicGraph:
    """Build an `AtomicGraph` (float64) from arrays in `Structure` units.

    Args:
        cutoff: neighbour-list radius, Å; None leaves the graph without edges
            (for `add_batch_edges` on the device).
        fixed_atom_forces: False leaves the forces on fixed atoms out of the labels.
    """
    n = int(len(atomic_numbers))
    f64 = torch.float64
    pbc = np.asarray(pbc, dtype=bool)
    if cutoff is None:
        edge_index, shifts = np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    else:
        edge_index, shifts = neighbour_list(positions, cell, pbc, cutoff)
    fixed_mask = torch.zeros(n, dtype=torch.bool) if fixed is None else torch.as_tensor(np.asarray(fixed, dtype=bool))
    forces_mask = torch.full((n,), forces is not None)
    if not fixed_atom_forces:
        forces_mask &= ~fixed_mask
    is_periodic = bool(pbc.all())
    graph = AtomicGraph(
        positions=torch.as_tensor(np.asarray(positions, dtype=np.float64)),
        atomic_numbers=torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64)),
        cell=torch.as_tensor(np.asarray(cell, dtype=np.float64)).view(1, 3, 3),
        pbc=torch.as_tensor(pbc).view(1, 3),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts).to(f64),
        natoms=torch.tensor([n], dtype=torch.long),
        energy=torch.tensor([energy if energy is not None else 0.0], dtype=f64),
        forces=torch.as_tensor(np.asarray(forces, dtype=np.float64)) if forces is not None else torch.zeros(n, 3, dtype=f64),
        stress=(
            torch.as_tensor(np.asarray(stress, dtype=np.float64)).view(1, 3, 3)
            if stress is not None
            else torch.zeros(1, 3, 3, dtype=f64)
        ),
        tags=torch.zeros(n, dtype=torch.long) if tags is None else torch.as_tensor(np.asarray(tags, dtype=np.int64)),
        fixed=fixed_mask,
        has_energy=torch.tensor([energy is not None]),
        has_stress=torch.tensor([stress is not None and is_periodic]),
        forces_mask=forces_mask,
    )
    graph.num_nodes = n
    return graph


def structure_to_graph(
    structure: Structure, cutoff: float | None, fixed_atom_forces: bool = True, min_distance: float = MIN_DISTANCE
) -> AtomicGraph:
    """The `AtomicGraph` of a structure (see `make_graph`); `DataError` naming it when two atoms
    are closer than ``min_distance`` Å (a zero-length edge has no direction: NaN everywhere)."""
    s = structure
    graph = make_graph(
        s.positions, s.atomic_numbers, s.cell, s.pbc, s.energy, s.forces, s.stress, s.tags, s.fixed, cutoff, fixed_atom_forces
    )
    check_overlaps(s.source, s.positions, s.cell, graph.edge_index.numpy(), graph.shifts.numpy(), min_distance)
    return graph


def add_batch_edges(batch: Data, cutoff: float) -> Data:
    """Fill ``edge_index`` and ``shifts`` of a batch on its own device with vesin-torch.

    One neighbour-list call per structure; the only host read is the per-structure
    atom counts. The result matches `neighbour_list` up to the order of the edges.
    """
    from vesin_torch import NeighborList

    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    positions = batch.positions.detach()
    counts = batch.natoms.tolist()
    pbc = batch.pbc.view(-1, 3)
    cells = batch.cell.view(-1, 3, 3).to(positions.dtype)
    edge_parts, shift_parts, offset = [], [], 0
    for k, n in enumerate(counts):
        # a molecule's cell is zeros and is ignored where pbc is False
        i, j, shifts = calculator.compute(positions[offset : offset + n], cells[k], pbc[k], quantities="ijS")
        edge_parts.append(torch.stack([j, i]).to(torch.long) + offset)
        shift_parts.append(shifts.to(positions.dtype))
        offset += n
    batch.edge_index = torch.cat(edge_parts, dim=1)
    batch.shifts = torch.cat(shift_parts, dim=0)
    return batch
