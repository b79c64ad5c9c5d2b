import pytest
import numpy as np
import torch
from ase.build import fcc111
from ase.neighborlist import neighbor_list
from torch_geometric.data import Batch

from mlip.data.graph import neighbour_list, structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from tests.conftest import random_alloy, random_cluster


def _edge_set(edge_index, shifts):
    return {(int(j), int(i), *map(int, s)) for (j, i), s in zip(edge_index.T, shifts)}


def test_neighbour_list_matches_ase_for_bulk_slab_and_molecule(rng):
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)  # pbc = (True, True, False)
    for atoms in (random_alloy(rng), random_alloy(rng, repeat=(2, 1, 1)), slab, random_cluster(rng)):
        edge_index, shifts = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, 4.5)
        i, j, s = neighbor_list("ijS", atoms, 4.5)
        assert _edge_set(edge_index, shifts) == _edge_set(np.stack([j, i]), s), f"mismatch for pbc={atoms.pbc}"


def test_edge_vectors_point_from_receiver_to_sender_within_cutoff(rng):
    atoms = random_alloy(rng)
    graph = structure_to_graph(structure_from_atoms(atoms, "test"), cutoff=4.0)
    sender, receiver = graph.edge_index
    vectors = graph.positions[sender] - graph.positions[receiver] + graph.shifts @ graph.cell[0]
    i, j, d = neighbor_list("ijd", atoms, 4.0)
    assert torch.all(vectors.norm(dim=1) < 4.0)
    assert np.allclose(np.sort(vectors.norm(dim=1).numpy()), np.sort(d))


def test_batching_offsets_edges_and_keeps_per_graph_labels(rng):
    graphs = [structure_to_graph(structure_from_atoms(random_alloy(rng), f"s{k}"), 3.0) for k in range(3)]
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 3 and batch.cell.shape == (3, 3, 3) and batch.stress.shape == (3, 3, 3)
    offset = graphs[0].num_nodes
    n0 = graphs[0].edge_index.shape[1]
    assert torch.equal(batch.edge_index[:, n0 : n0 + 5], graphs[1].edge_index[:, :5] + offset)
    assert not batch.has_energy.any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_neighbour_lists_on_cuda_match_the_cpu_ones(rng):
    from mlip.data.graph import add_batch_edges

    structures = [structure_from_atoms(random_alloy(rng, repeat=(2, 2, 2)), f"s{k}") for k in range(3)]
    cpu = Batch.from_data_list([structure_to_graph(s, 4.0) for s in structures])
    gpu = add_batch_edges(Batch.from_data_list([structure_to_graph(s, None) for s in structures]).to("cuda"), 4.0)
    assert gpu.edge_index.is_cuda

    def edges(batch):
        return sorted(zip(*batch.edge_index.cpu().tolist(), *batch.shifts.cpu().round().long().T.tolist()))

    assert edges(gpu) == edges(cpu)
