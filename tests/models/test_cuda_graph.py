"""Padding for CUDA-graph replay (`GraphedPotential`), checked eagerly on the CPU."""

import pytest
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.cuda_graph import GraphedPotential, bucket_of, padded_size
from tests.conftest import make_tiny_potential, random_alloy, random_cluster


@pytest.mark.parametrize("steps", [4, 8])
def test_padded_size_is_a_small_step_up(steps):
    sizes = [padded_size(count, steps) for count in range(1, 5000)]
    assert all(size >= count for count, size in zip(range(1, 5000), sizes))
    assert all(size <= max(2 * steps, count * (1 + 1 / steps)) for count, size in zip(range(1, 5000), sizes))
    assert len(set(sizes[2 * steps :])) <= steps * 10  # `steps` buckets per octave, 5000 < 2^13


def _batch(rng, potential):
    atoms = [random_alloy(rng, (2, 1, 1)), random_cluster(rng), random_alloy(rng)]
    return Batch.from_data_list([structure_to_graph(structure_from_atoms(a, f"s{i}"), potential.r_max) for i, a in enumerate(atoms)])


def test_padded_inputs_give_the_unpadded_results(rng):
    potential = make_tiny_potential(correlation=3)
    graphed = GraphedPotential(potential, compute_stress=True, capture=False)
    batch = _batch(rng, potential)
    reference = potential(batch, compute_stress=True)
    for _ in range(2):  # the second call reuses the bucket's buffers
        out = graphed(batch)
        assert bucket_of(batch.num_nodes, batch.edge_index.shape[1], 3, 8) in graphed.graphs.buckets
        for key in ("energy", "node_energy", "forces", "stress"):
            assert out[key].shape == reference[key].shape, key
            torch.testing.assert_close(out[key], reference[key], rtol=1e-12, atol=1e-12)


def test_a_smaller_graph_in_the_same_bucket_leaves_no_trace(rng):
    potential = make_tiny_potential()
    graphed = GraphedPotential(potential, steps_per_octave=2, capture=False)
    big = structure_to_graph(structure_from_atoms(random_alloy(rng, (3, 3, 2)), "big"), potential.r_max)
    small_atoms = random_alloy(rng, (3, 3, 2))
    del small_atoms[[0, 5, 11, 40, 41]]
    small = structure_to_graph(structure_from_atoms(small_atoms, "small"), potential.r_max)
    steps = graphed.steps_per_octave
    assert bucket_of(big.num_nodes, big.edge_index.shape[1], 1, steps) == bucket_of(
        small.num_nodes, small.edge_index.shape[1], 1, steps
    )
    graphed(big)
    out, reference = graphed(small), potential(small, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-12, atol=1e-12)
    assert len(graphed.graphs.buckets) == 1


def test_reallocated_weights_drop_the_buckets(rng):
    """A move reallocates the weights (Lightning moves the module to the CPU after a fit and
    back for the test); graphs captured before would read the old addresses, so all go."""
    potential = make_tiny_potential()
    graphed = GraphedPotential(potential, capture=False)
    graph = structure_to_graph(structure_from_atoms(random_alloy(rng, (2, 2, 1)), "a"), potential.r_max)
    graphed(graph)
    graphed(graph)
    assert (len(graphed.graphs.buckets), graphed.graphs.evictions) == (1, 0)  # same weights: kept
    potential.double().float()  # new storage for every weight and buffer
    out = graphed(graph)
    assert (graphed.graphs.captures, graphed.graphs.evictions) == (2, 1)
    torch.testing.assert_close(out["forces"], potential(graph)["forces"], rtol=1e-6, atol=1e-6)


def test_thrashing_buckets_warn_once(rng):
    potential = make_tiny_potential()
    graphed = GraphedPotential(potential, steps_per_octave=8, max_graphs=1, capture=False)
    graphs = [structure_to_graph(structure_from_atoms(random_alloy(rng, (n, 1, 1)), f"s{n}"), potential.r_max)
              for n in (1, 2, 3, 4, 5)]
    with pytest.warns(UserWarning, match="padded sizes captured"):
        for graph in graphs:
            graphed(graph)
    assert graphed.graphs.captures == 5 and len(graphed.graphs.buckets) == 1
    assert graphed.graphs.evictions == 4 and graphed.graphs.capture_s > 0
