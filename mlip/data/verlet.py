"""A neighbour list that stays on the device and is rebuilt only when atoms have moved far enough.

`VerletList` finds the pairs of one structure closer than ``cutoff + skin`` with vesin-torch on
the positions' device, and on every call returns those closer than ``cutoff`` at the current
positions (their vectors recomputed, so the result is the exact list either way). It is
rebuilt when an atom has moved more than ``skin / 2`` since the last build: no pair can then
have come from beyond ``cutoff + skin`` to within ``cutoff`` (each of its two atoms moved at
most ``skin / 2``). A new cell, periodicity or atom count rebuilds it too.

The displacement test runs on the host copy of the positions that a caller such as ASE
already holds (no device read); the filter to ``cutoff`` reads one count from the device.
Edge convention as everywhere (`mlip.data.graph`): ``edge_index[0]`` the sender j,
``edge_index[1]`` the receiver i, ``r_ij = x_j - x_i + shifts @ cell``.
"""

from __future__ import annotations

import numpy as np
import torch


class VerletList:
    """Pairs of one structure within ``cutoff`` Å, from a list at ``cutoff + skin`` kept on the device.

    Args:
        cutoff: the model's cutoff, Å.
        skin: extra distance of the stored list, Å (0 rebuilds on every move).

    ``builds`` counts the rebuilds (for tests and benchmarks).
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        from vesin_torch import NeighborList

        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self._search = NeighborList(cutoff=self.cutoff + self.skin, full_list=True)
        self._reference: np.ndarray | None = None  # host positions [n, 3] Å at the last build
        self._cell = self._pbc = None
        self.builds = 0

    def _stale(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._reference is None or self._reference.shape != positions.shape:
            return True
        if not (np.array_equal(cell, self._cell) and np.array_equal(pbc, self._pbc)):
            return True
        moved = np.einsum("ij,ij->i", positions - self._reference, positions - self._reference).max(initial=0.0)
        return bool(moved > (0.5 * self.skin) ** 2)

    def _build(self, positions: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray) -> None:
        periodic = torch.as_tensor(pbc, dtype=torch.bool, device=positions.device).contiguous()
        box = cell if bool(pbc.any()) else torch.zeros_like(cell)
        i, j, shifts = self._search.compute(positions.detach(), box.detach(), periodic, quantities="ijS")
        self._pairs = torch.stack([j, i]).to(torch.long)  # sender j, receiver i
        self._pair_shifts = shifts.to(positions.dtype)
        self.builds += 1

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor, host_positions: np.ndarray, host_cell: np.ndarray,
                 pbc: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``edge_index`` [2, E], ``shifts`` [E, 3] (lattice images, in the positions' dtype) and
        the lengths [E] Å of the pairs closer than ``cutoff`` at ``positions`` [n, 3] Å in ``cell``
        [3, 3] Å (on the device), given also as float64 host arrays, and ``pbc`` [3]."""
        pbc = np.asarray(pbc, dtype=bool).reshape(3)
        if self._stale(host_positions, host_cell, pbc):
            self._build(positions, cell, pbc)
            self._reference = np.array(host_positions, dtype=np.float64)
            self._cell, self._pbc = np.array(host_cell, dtype=np.float64), pbc
        sender, receiver = self._pairs
        vectors = positions[sender] - positions[receiver] + self._pair_shifts @ cell
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        keep = torch.nonzero(lengths < self.cutoff).squeeze(1)  # the one device read: how many
        return self._pairs[:, keep], self._pair_shifts[keep], lengths[keep]
