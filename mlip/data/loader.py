"""`GraphLoader`: a DataLoader of `AtomicGraph` batches whose worker output travels as NumPy arrays.

A collated torch_geometric batch holds a few dozen small tensors (the data and the
slice bookkeeping). Handing tensors from a worker to the main process costs a
shared-memory file per tensor, which made 2 workers slower than none (measured: a
trivial dataset fell from ~7000 to ~700 structures/s). Workers therefore return a
`PackedBatch` of NumPy arrays, which pickle as plain bytes, and the loader rebuilds
the torch_geometric batch in the main process without copying.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info
from torch_geometric.data import Batch

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
    """A collated batch as NumPy arrays: its attributes, slices and increments."""

    attributes: dict[str, Any]
    slices: dict[str, Any]
    increments: dict[str, Any]
    num_graphs: int

    @classmethod
    def pack(cls, batch: Batch) -> PackedBatch:
        return cls(
            {k: _to_numpy(v) for k, v in batch._store.items()},
            _to_numpy(batch._slice_dict),
            _to_numpy(batch._inc_dict),
            batch.num_graphs,
        )

    def unpack(self) -> Batch:
        batch = Batch(_base_cls=AtomicGraph)
        for key, value in self.attributes.items():
            batch[key] = _to_torch(value)
        batch._slice_dict = _to_torch(self.slices)
        batch._inc_dict = _to_torch(self.increments)
        batch._num_graphs = self.num_graphs
        return batch


def collate_graphs(graphs: Sequence[AtomicGraph]) -> Batch | PackedBatch:
    """torch_geometric's collation; packed as arrays when running in a DataLoader worker."""
    batch = Batch.from_data_list(list(graphs))
    return PackedBatch.pack(batch) if get_worker_info() is not None else batch


class GraphLoader(DataLoader):
    """A `torch.utils.data.DataLoader` of `AtomicGraph` datasets yielding torch_geometric batches."""

    def __init__(self, dataset, **kwargs: Any):
        kwargs["collate_fn"] = collate_graphs
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch
