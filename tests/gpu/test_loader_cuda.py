"""Loader batches on their way to the GPU: pinned in one buffer by the workers' pinning thread,
moved in one asynchronous copy (`mlip.data.loader.batch_to_device`)."""

import pytest
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.loader import GraphLoader, batch_to_device
from mlip.data.readers.atoms import structure_from_atoms
from tests.conftest import random_alloy, random_cluster

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_worker_batches_cross_pinned_and_equal(rng):
    systems = [random_alloy(rng) if k % 2 else random_cluster(rng, 3 + k % 5) for k in range(24)]
    graphs = [structure_to_graph(structure_from_atoms(a, f"s{k}"), 4.0) for k, a in enumerate(systems)]
    loader = GraphLoader(graphs, batch_size=5, num_workers=2, pin_memory=True)
    seen = 0
    for k, batch in enumerate(loader):
        tensors = {key: v for key, v in batch._store.items() if isinstance(v, torch.Tensor)}
        assert all(v.is_pinned() for v in tensors.values())
        moved = batch_to_device(batch, torch.device("cuda"))
        reference = Batch.from_data_list(graphs[5 * k : 5 * k + 5])
        for key, value in reference._store.items():
            if isinstance(value, torch.Tensor):
                assert moved[key].is_cuda and torch.equal(moved[key].cpu(), value), key
        seen += moved.num_graphs
    assert seen == len(graphs)
