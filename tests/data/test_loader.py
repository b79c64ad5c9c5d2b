"""`batch_graphs`: the same batch as torch_geometric's collation, built directly."""

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.loader import PackedBatch, batch_graphs, batch_to_device
from mlip.data.readers.atoms import structure_from_atoms
from tests.conftest import random_alloy, random_cluster


def _graphs(rng):
    lone = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])  # no edges at all
    systems = [random_alloy(rng), random_cluster(rng, 5), lone, random_alloy(rng, repeat=(1, 1, 2)), random_cluster(rng, 3)]
    return [structure_to_graph(structure_from_atoms(a, f"s{i}"), 4.0) for i, a in enumerate(systems)]


def _assert_same(ours, theirs):
    assert type(ours).__mro__[1:] == type(theirs).__mro__[1:]
    assert set(ours.keys()) == set(theirs.keys())
    for key in theirs.keys():
        if isinstance(theirs[key], torch.Tensor):
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
        else:
            assert ours[key] == theirs[key], key
    for bookkeeping in ("_slice_dict", "_inc_dict"):
        mine, reference = getattr(ours, bookkeeping), getattr(theirs, bookkeeping)
        assert mine.keys() == reference.keys()
        assert all(torch.equal(mine[k], reference[k]) for k in reference), bookkeeping
    assert (ours.num_graphs, ours.num_nodes) == (theirs.num_graphs, theirs.num_nodes)


def test_batch_graphs_equals_torch_geometric_collation(rng):
    graphs = _graphs(rng)
    ours, theirs = batch_graphs(graphs), Batch.from_data_list(graphs)
    _assert_same(ours, theirs)
    for back, original in zip(ours.to_data_list(), graphs):  # the bookkeeping splits it again
        assert all(torch.equal(back[k], original[k]) for k in original.keys() if isinstance(original[k], torch.Tensor))
    _assert_same(PackedBatch.pack(ours).unpack(), theirs)  # as from a loader worker
    assert ours.edge_index.max() < ours.num_nodes and np.all(np.diff(ours.ptr.numpy()) == [len(g.positions) for g in graphs])


def test_graphs_with_other_keys_go_to_torch_geometric(rng):
    graphs = _graphs(rng)[:2]
    graphs[1].extra = torch.ones(1)  # keys differ
    _assert_same(batch_graphs(graphs), Batch.from_data_list(graphs))


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def test_a_packed_batch_is_pinned_by_the_loaders_pinning_thread(rng, monkeypatch):
    """torch's pinning utility hands a packed batch to `PackedBatch.pin_memory`: what reaches
    the main process is the rebuilt batch, every tensor a view of one pinned buffer (pinning
    itself needs CUDA, so here the buffer's pin_memory only marks it)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []

    def mark(tensor, *args, **kwargs):
        pinned.append(tensor.clone())
        return pinned[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", mark)
    graphs = _graphs(rng)
    out = pin_memory(PackedBatch.pack(batch_graphs(graphs)))
    _assert_same(out, Batch.from_data_list(graphs))
    assert len(pinned) == 1 and pinned[0].dtype == torch.uint8
    assert all(_storage(value) == _storage(pinned[0]) for value in out._store.values() if isinstance(value, torch.Tensor))


def test_a_packed_batch_crosses_to_the_device_in_one_copy(rng, monkeypatch):
    """`batch_to_device` copies the buffer once and views the copy (to the meta device here:
    no data, so only shapes and dtypes are checked), never through ``Batch.to``; a batch
    whose tensor was replaced since it was rebuilt goes tensor by tensor, as do others."""
    graphs = _graphs(rng)
    reference = Batch.from_data_list(graphs)
    copies = []
    original_to = torch.Tensor.to

    def counted(tensor, *args, **kwargs):
        copies.append(tensor.shape)
        return original_to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counted)
    monkeypatch.setattr(Batch, "to", lambda *a, **k: pytest.fail("moved tensor by tensor"), raising=False)
    moved = batch_to_device(PackedBatch.pack(batch_graphs(graphs)).unpack(), "meta")
    assert len(copies) == 1 and len(copies[0]) == 1  # the byte buffer, once
    tensors = {k: v for k, v in reference._store.items() if isinstance(v, torch.Tensor)}
    assert {k for k, v in moved._store.items() if isinstance(v, torch.Tensor)} == set(tensors)
    for key, value in tensors.items():
        assert moved[key].device.type == "meta" and (moved[key].dtype, moved[key].shape) == (value.dtype, value.shape), key
    assert moved.num_graphs == reference.num_graphs and moved.num_nodes == reference.num_nodes

    monkeypatch.undo()
    replaced = PackedBatch.pack(batch_graphs(graphs)).unpack()
    replaced.positions = replaced.positions + 1.0
    calls = []
    monkeypatch.setattr(Batch, "to", lambda self, *a, **k: calls.append(a) or self, raising=False)
    for batch in (replaced, batch_graphs(graphs)):
        assert batch_to_device(batch, "meta") is batch
    assert calls == [("meta",), ("meta",)]


def test_a_batch_moved_in_one_copy_equals_the_batch(rng):
    graphs = _graphs(rng)
    packed = PackedBatch.pack(batch_graphs(graphs))
    buffer = torch.from_numpy(packed.data.copy())  # a copy, as on a device
    moved = batch_to_device(packed.unpack(buffer), torch.device("cpu"))
    _assert_same(moved, Batch.from_data_list(graphs))
