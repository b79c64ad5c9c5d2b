"""`batch_graphs`: the same batch as torch_geometric's collation, built directly."""

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.loader import PackedBatch, batch_graphs
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


def test_a_packed_batch_is_pinned_by_the_loaders_pinning_thread(rng, monkeypatch):
    """torch's pinning utility hands a packed batch to `PackedBatch.pin_memory`: what reaches
    the main process is the rebuilt batch with every tensor pinned (pinning itself needs CUDA,
    so here each tensor's pin_memory only marks it)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = set()

    def mark(tensor, *args, **kwargs):
        pinned.add(id(tensor))
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", mark)
    graphs = _graphs(rng)
    out = pin_memory(PackedBatch.pack(batch_graphs(graphs)))
    _assert_same(out, Batch.from_data_list(graphs))
    assert all(id(value) in pinned for value in out._store.values() if isinstance(value, torch.Tensor))
