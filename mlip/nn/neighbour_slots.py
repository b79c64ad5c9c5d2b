"""Each atom's edges laid out in a fixed number of slots: the dense form attention needs.

A graph's edges (sender j, receiver i) become a table ``[n_nodes, K]`` of edge indices,
each row the receiver's edges nearest first, padded with ``E`` (one past the last edge)
where an atom has fewer than K neighbours. Features gathered through the table, with a
padding row appended, form the ``[n_nodes, K, C]`` sequences of a per-atom attention.

An atom with more than K neighbours keeps its K nearest: the rest are dropped, so the
energy jumps where two of them swap rank across the K-th place. Choose K at least the
largest neighbour count of the structures you run (``max_neighbors`` of the models that use it).

Built from sorts and scatters only (no host synchronisation), so it runs inside a CUDA graph.
"""

from __future__ import annotations

import torch


def neighbour_slots(receiver: torch.Tensor, lengths: torch.Tensor, num_nodes: int, slots: int) -> torch.Tensor:
    """Edge indices [num_nodes, slots] of each receiver's edges, nearest first; ``len(receiver)`` pads.

    receiver [E] (node index of each edge's receiver), lengths [E] Å.
    """
    num_edges = receiver.shape[0]
    by_length = torch.argsort(lengths.detach(), stable=True)
    order = by_length.index_select(0, torch.argsort(receiver.index_select(0, by_length), stable=True))
    sorted_receiver = receiver.index_select(0, order)
    counts = torch.zeros(num_nodes, dtype=torch.long, device=receiver.device)
    counts.scatter_add_(0, receiver, torch.ones_like(receiver))
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(num_edges, device=receiver.device) - starts.index_select(0, sorted_receiver)
    kept = rank < slots
    # slots beyond K land in one spare cell past the table, which is cut off
    cell = torch.where(kept, sorted_receiver * slots + rank, torch.full_like(rank, num_nodes * slots))
    table = torch.full((num_nodes * slots + 1,), num_edges, dtype=torch.long, device=receiver.device)
    table.scatter_(0, cell, order)
    return table[:-1].view(num_nodes, slots)


def gather_slots(values: torch.Tensor, table: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
    """values [E, ...] -> [n, K, ...] through ``table`` (from `neighbour_slots`); padded slots get ``padding``."""
    pad = values.new_full((1, *values.shape[1:]), padding)
    return torch.cat([values, pad]).index_select(0, table.reshape(-1)).view(*table.shape, *values.shape[1:])
