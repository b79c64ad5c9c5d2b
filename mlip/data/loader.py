"""`GraphLoader`: a DataLoader of `AtomicGraph` batches whose worker output travels as one byte buffer.

A collated torch_geometric batch holds a few dozen small tensors (the data and the
slice bookkeeping). Handing tensors from a worker to the main process costs a
shared-memory file per tensor, which made 2 workers slower than none (measured: a
trivial dataset fell from ~7000 to ~700 structures/s). Workers therefore return a
`PackedBatch`: every tensor of the batch back to back in one NumPy byte array (which
pickles as plain bytes) and the slice bookkeeping as arrays. The loader rebuilds the
torch_geometric batch without copying, its tensors views of that buffer: in the
DataLoader's pinning thread when ``pin_memory`` is on (`PackedBatch.pin_memory`: the
buffer is page-locked in one piece), else in the main process.

`batch_to_device` then moves such a batch with one asynchronous copy of its buffer and
views of the copy, where `Batch.to` makes an allocation and a copy per tensor (17 for an
`AtomicGraph` batch): host time the training loop spends at every step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch_geometric.data import Batch

from mlip.data.flat_buffer import Slot, flatten, views_of
from mlip.data.graph import AtomicGraph


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    return value


@dataclass
class PackedBatch:
    """A collated batch as one byte buffer of its tensors, the rest of its store, and its slices
    and increments (NumPy arrays)."""

    data: np.ndarray  # uint8: the store's tensors back to back, at `Slot` offsets
    slots: list[Slot]
    others: dict[str, Any]  # store entries that are not tensors (num_nodes)
    slices: dict[str, Any]
    increments: dict[str, Any]
    num_graphs: int

    @classmethod
    def pack(cls, batch: Batch) -> PackedBatch:
        tensors = {k: v for k, v in batch._store.items() if isinstance(v, torch.Tensor)}
        data, slots, _ = flatten(tensors, "cpu")
        return cls(
            data.numpy(),
            slots,
            {k: v for k, v in batch._store.items() if k not in tensors},
            _to_numpy(batch._slice_dict),
            _to_numpy(batch._inc_dict),
            batch.num_graphs,
        )

    def unpack(self, buffer: torch.Tensor | None = None) -> Batch:
        """The batch, its tensors views of ``buffer`` (default: of ``data``, no copy)."""
        buffer = torch.from_numpy(self.data) if buffer is None else buffer
        views = views_of(buffer, self.slots)
        batch = Batch(_base_cls=AtomicGraph)
        for key, value in views.items():
            batch[key] = value
        for key, value in self.others.items():
            batch[key] = value
        batch._slice_dict = _to_torch(self.slices)
        batch._inc_dict = _to_torch(self.increments)
        batch._num_graphs = self.num_graphs
        batch.__dict__["_packed"] = (buffer, self.slots, views)  # for batch_to_device
        return batch

    def pin_memory(self) -> Batch:
        """The batch, rebuilt on one page-locked buffer. The DataLoader's pinning thread calls
        this (``pin_memory=True``): the main process receives a batch whose copy to the GPU
        runs asynchronously (a packed batch would reach it unpinned: a pageable copy), and the
        rebuilding happens off its thread."""
        return self.unpack(torch.from_numpy(self.data).pin_memory())


def batch_to_device(batch: Batch, device: torch.device | str, non_blocking: bool = True) -> Batch:
    """``batch.to(device, non_blocking)``, in one copy for a batch rebuilt from a `PackedBatch`.

    Its tensors become views of the buffer's copy on ``device``, in place, as ``Batch.to``
    replaces them; the slice bookkeeping stays on the host, as there. A batch whose tensors
    were replaced since it was rebuilt, or any other batch, moves tensor by tensor."""
    packed = batch.__dict__.pop("_packed", None)
    if packed is not None:
        buffer, slots, views = packed
        mapping = batch._store._mapping
        if all(mapping.get(key) is view for key, view in views.items()) and all(
                not isinstance(v, torch.Tensor) for k, v in mapping.items() if k not in views):
            mapping.update(views_of(buffer.to(device, non_blocking=non_blocking), slots))
            return batch
    return batch.to(device, non_blocking=non_blocking)


def _repeat(values: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``torch.repeat_interleave(values, counts)`` by NumPy: torch's CPU kernel starts its
    thread pool even for ten entries, and after a pause that took ~7 ms a call on this
    project's 2-core CI machine (NumPy: microseconds)."""
    return torch.from_numpy(np.repeat(values.numpy(), counts))


def batch_graphs(graphs: Sequence[AtomicGraph]) -> Batch:
    """The torch_geometric batch of ``graphs``, built directly: one concatenation per key.

    Equal to ``Batch.from_data_list`` (attributes, ``batch``, ``ptr``, and the slice and
    increment bookkeeping that ``to_data_list`` uses), at a fraction of its host time
    (1.08 -> 0.41 ms for ten 27-atom molecules on this project's CI CPU: torch_geometric's
    generic collation inspects every attribute of every graph). Graphs whose keys differ,
    or that hold anything but tensors of at least one dimension, go to torch_geometric.
    """
    first = graphs[0]
    stores = [g._store._mapping for g in graphs]  # attribute dicts, without torch_geometric's lookups
    keys = [key for key in stores[0] if key != "num_nodes"]
    if any(store.keys() != stores[0].keys() for store in stores) or any(
            not isinstance(stores[0][key], torch.Tensor) or stores[0][key].dim() == 0 for key in keys):
        return Batch.from_data_list(list(graphs))
    counts = [int(store["num_nodes"]) for store in stores]
    offsets = torch.tensor([0, *counts]).cumsum(0)  # [G + 1]: also ``ptr``
    per_graph = torch.arange(len(graphs) + 1)
    zeros = torch.zeros(len(graphs), dtype=torch.long)
    out = Batch(_base_cls=type(first))
    slices, increments = {}, {}
    for key in keys:
        values = [store[key] for store in stores]
        dim = first.__cat_dim__(key, values[0]) % values[0].dim()
        sizes = [v.shape[dim] for v in values]
        # node- and graph-level attributes share their slices; others (edges) get their own
        slices[key] = offsets if sizes == counts else per_graph if all(n == 1 for n in sizes) else (
            torch.tensor([0, *sizes]).cumsum(0))
        value = torch.cat(values, dim)
        if first.__inc__(key, values[0]):  # node indices (edge_index): shifted by the nodes before
            increments[key] = offsets[:-1]
            shape = [1] * value.dim()
            shape[dim] = -1
            value = value + _repeat(offsets[:-1], sizes).view(shape)
        else:
            increments[key] = zeros
        out[key] = value
    out.batch = _repeat(per_graph[:-1], counts)
    out.ptr = offsets
    out._store._num_nodes = counts
    out.num_nodes = int(offsets[-1])
    out._slice_dict, out._inc_dict, out._num_graphs = slices, increments, len(graphs)
    return out


def collate_graphs(graphs: Sequence[AtomicGraph]) -> Batch | PackedBatch:
    """`batch_graphs`; packed as arrays when running in a DataLoader worker."""
    batch = batch_graphs(graphs)
    return PackedBatch.pack(batch) if get_worker_info() is not None else batch


class GraphLoader(DataLoader):
    """A `torch.utils.data.DataLoader` of `AtomicGraph` datasets yielding torch_geometric batches."""

    def __init__(self, dataset, **kwargs: Any):
        kwargs["collate_fn"] = collate_graphs
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch
