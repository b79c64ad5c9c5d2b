"""A neighbour list that stays on the device and is rebuilt only when atoms have moved far enough.

`VerletList` finds the pairs of one structure closer than ``cutoff + skin`` with vesin-torch on
the positions' device, and on every call returns those closer than ``cutoff`` at the current
positions (their vectors recomputed, so the result is the exact list either way). It is
rebuilt when an atom has moved more than ``skin / 2`` since the last build: no pair can then
have come from beyond ``cutoff + skin`` to within ``cutoff`` (each of its two atoms moved at
most ``skin / 2``). A new cell, periodicity or atom count rebuilds it too.

The displacement test runs on the host copy of the positions that a caller such as ASE
already holds (no device read); the filter to ``cutoff`` reads one count from the device.
`BatchedVerletList` does the same for a batch whose positions live on the device (torch-sim),
rebuilding only the structures that moved.

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


class BatchedVerletList:
    """`VerletList` for a batch of structures whose positions live on the device (torch-sim).

    Each structure's pairs within ``cutoff + skin`` come from vesin-torch and are kept; a call
    rebuilds only the structures of which an atom has moved more than ``skin / 2`` or whose cell
    changed (tested on the device: one read of a flag per structure), and all of them when the
    batch itself changed (other atoms or structures). The pairs closer than ``cutoff`` at the
    current positions are returned, exact either way.

    An atom that a periodic boundary wrapped (torch-sim wraps positions into the cell) has jumped
    by a lattice vector, not moved: its displacement is taken modulo the cell, and its stored
    pairs' shifts (and its reference position) follow it by the whole cells it jumped, so wrapping
    alone rebuilds nothing.
    (Only along directions where the cell is wider than twice the skin, so that a jump and a
    move cannot be confused; in narrower cells a wrap rebuilds the structure.)

    ``builds`` counts the structures whose list was built (for tests and benchmarks).
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        from vesin_torch import NeighborList

        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self._search = NeighborList(cutoff=self.cutoff + self.skin, full_list=True)
        self._system_idx: torch.Tensor | None = None
        self.builds = 0

    def _stale_systems(self, positions: torch.Tensor, cells: torch.Tensor, system_idx: torch.Tensor,
                       periodic: torch.Tensor) -> list[int] | None:
        """Structures to rebuild; None: all of them (a new batch)."""
        same = (self._system_idx is not None and self._system_idx.shape == system_idx.shape
                and self._cells.shape == cells.shape and bool(torch.equal(self._periodic, periodic)))
        if not same:
            return None
        jumps = self._jumps(positions, system_idx)
        offsets = 0.0 if jumps is None else torch.bmm(jumps.unsqueeze(1),
                                                      self._cells.index_select(0, system_idx)).squeeze(1)
        moved = (positions.detach() - self._reference - offsets).square().sum(dim=1)
        farthest = torch.zeros(cells.shape[0], dtype=moved.dtype, device=moved.device)
        farthest = farthest.scatter_reduce(0, system_idx, moved, reduce="amax")
        stale = (farthest > (0.5 * self.skin) ** 2) | (cells != self._cells).flatten(1).any(dim=1)
        jumped = torch.zeros(1, dtype=torch.bool, device=stale.device) if jumps is None else jumps.any().view(1)
        # one read: the batch's layout, whether an atom jumped, and the stale flags
        flags = torch.cat([(system_idx != self._system_idx).any().view(1), jumped, stale]).tolist()
        if flags[0]:
            return None
        if flags[1]:  # the stored pairs follow the jumped atoms: x_j - x_i + s·cell is unchanged
            sender, receiver = self._pairs
            self._shifts = self._shifts - jumps[sender] + jumps[receiver]
            self._reference = self._reference + offsets
        return [k for k, flag in enumerate(flags[2:]) if flag]

    def _set_cells(self, cells: torch.Tensor, rebuilt: torch.Tensor | None = None) -> None:
        """Keep the cells of the last builds, their inverses and the directions where a jump by a
        whole cell can be told from a move (periodic, and wider than twice the skin)."""
        cells = cells.detach()
        if rebuilt is None:
            self._cells = cells.clone()
        else:
            self._cells[rebuilt] = cells[rebuilt]
        if not self._any_periodic:
            self._inverse = self._jumpable = None
            return
        safe = torch.where(self._periodic[None, :, None], self._cells,
                           torch.eye(3, dtype=cells.dtype, device=cells.device).expand_as(self._cells))
        self._inverse = torch.linalg.inv(safe)
        widths = 1.0 / torch.linalg.vector_norm(self._inverse, dim=1)  # between opposite faces, Å
        self._jumpable = (widths > 2.0 * self.skin) & self._periodic[None, :]

    def _jumps(self, positions: torch.Tensor, system_idx: torch.Tensor) -> torch.Tensor | None:
        """Whole cells each atom jumped since the last build [N, 3] (fractional, integers), or None."""
        if self._inverse is None:
            return None
        shift = positions.detach() - self._reference
        fractional = torch.bmm(shift.unsqueeze(1), self._inverse.index_select(0, system_idx)).squeeze(1)
        return torch.round(fractional) * self._jumpable.index_select(0, system_idx)

    def _build(self, positions: torch.Tensor, cells: torch.Tensor, periodic: torch.Tensor,
               systems: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pairs, shifts, owners = [], [], []
        for k in systems:
            start, stop = self._offsets[k], self._offsets[k + 1]
            box = cells[k] if bool(self._any_periodic) else torch.zeros_like(cells[k])
            i, j, s = self._search.compute(positions[start:stop].detach(), box.detach(), periodic, quantities="ijS")
            pairs.append(torch.stack([j, i]).to(torch.long) + start)  # sender j, receiver i
            shifts.append(s.to(positions.dtype))
            owners.append(torch.full((i.shape[0],), k, dtype=torch.long, device=positions.device))
        self.builds += len(systems)
        return torch.cat(pairs, dim=1), torch.cat(shifts), torch.cat(owners)

    def __call__(self, positions: torch.Tensor, cells: torch.Tensor, system_idx: torch.Tensor,
                 pbc: torch.Tensor | bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_index`` [2, E] and ``shifts`` [E, 3] (lattice images, the positions' dtype) of
        the pairs closer than ``cutoff`` at ``positions`` [N, 3] Å of structures ``system_idx``
        [N] (sorted) with ``cells`` [S, 3, 3] Å (rows are lattice vectors) and ``pbc`` (one flag
        or [3], the same for every structure, as torch-sim's states have it)."""
        # contiguous: vesin reads the three flags from memory (an expanded 0-d tensor gave it garbage)
        periodic = torch.as_tensor(pbc, dtype=torch.bool, device=positions.device).reshape(-1).repeat(3)[:3].contiguous()
        stale = self._stale_systems(positions, cells, system_idx, periodic)
        if stale is None:
            counts = torch.bincount(system_idx, minlength=cells.shape[0]).tolist()
            self._offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
            self._any_periodic = bool(periodic.any())
            self._system_idx, self._periodic = system_idx.clone(), periodic
            self._pairs, self._shifts, self._owners = self._build(positions, cells, periodic, list(range(cells.shape[0])))
            self._reference = positions.detach().clone()
            self._set_cells(cells)
        elif stale:
            rebuilt = torch.zeros(cells.shape[0], dtype=torch.bool, device=positions.device)
            rebuilt[stale] = True
            keep = ~rebuilt.index_select(0, self._owners)
            pairs, shifts, owners = self._build(positions, cells, periodic, stale)
            self._pairs = torch.cat([self._pairs[:, keep], pairs], dim=1)
            self._shifts = torch.cat([self._shifts[keep], shifts])
            self._owners = torch.cat([self._owners[keep], owners])
            moved_atoms = rebuilt.index_select(0, system_idx)
            self._reference[moved_atoms] = positions.detach()[moved_atoms]
            self._set_cells(cells, rebuilt)
        sender, receiver = self._pairs
        shifts = self._shifts
        offsets = torch.bmm(shifts.unsqueeze(1), cells.index_select(0, self._owners)).squeeze(1)
        vectors = positions.detach()[sender] - positions.detach()[receiver] + offsets.detach()
        keep = torch.nonzero(torch.linalg.vector_norm(vectors, dim=1) < self.cutoff).squeeze(1)
        return self._pairs[:, keep], shifts[keep]
