"""The graphed training loss on padded buffers equals the eager loss, gradients included (CPU, eager)."""

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.training.cuda_graph_loss import GraphedLoss
from mlip.training.loss import EnergyForcesStressLoss
from tests.conftest import assert_graphed_loss_matches, make_tiny_potential, random_alloy, random_cluster


def _labelled(atoms, name, r_max, **keys):
    atoms.calc = EMT()
    atoms.get_potential_energy(), atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    return structure_to_graph(structure_from_atoms(atoms, name), r_max, **keys)


def test_padded_loss_and_gradients_equal_the_eager_ones(rng):
    potential = make_tiny_potential(correlation=3)
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=5.0)
    fixed = random_alloy(rng, (2, 1, 1))
    fixed.set_tags(np.arange(len(fixed)) % 2)
    graphs = [_labelled(random_alloy(rng), "a", potential.r_max), _labelled(random_cluster(rng), "c", potential.r_max),
              _labelled(fixed, "f", potential.r_max)]
    graphs[2].forces_mask[::3] = False  # unlabelled atoms stay out of the mean
    batch = Batch.from_data_list(graphs)
    assert not bool(batch.has_stress.all()) and bool(batch.has_stress.any())

    reference, reference_terms = loss_fn(potential(batch, compute_stress=True, create_graph=True), batch)
    expected = torch.autograd.grad(reference, list(potential.parameters()))
    graphed = GraphedLoss(potential, loss_fn, compute_stress=True, capture=False)
    for _ in range(2):
        loss, terms = graphed(batch)
        torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
        assert terms.keys() == reference_terms.keys()
        potential.zero_grad(set_to_none=True)
        (2.0 * loss).backward()
        for p, g in zip(potential.parameters(), expected):
            torch.testing.assert_close(p.grad, 2.0 * g, rtol=1e-10, atol=1e-12)


def test_padded_loss_of_a_two_head_model_with_replay_weights_equals_the_eager_one(rng):
    """Fine-tuning with replay: each structure trains its own head, weighted; the padded buffers
    carry both (`PaddedHeadLabels`)."""
    from mlip.finetune.rebuild import rebuild_potential

    potential = rebuild_potential(make_tiny_potential(correlation=2), heads=[("foundation", 0), ("finetune", 0)])
    with torch.no_grad():
        potential.head_shift[1] += 0.3
        potential.model.readouts[0].linear.weight.view(-1, 2)[:, 1] *= 0.5
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=5.0)
    graphs = [_labelled(random_alloy(rng), "a", potential.r_max), _labelled(random_cluster(rng), "c", potential.r_max),
              _labelled(random_alloy(rng), "b", potential.r_max)]
    for graph, head, weight in zip(graphs, (1, 0, 0), (1.0, 3.0, 0.5)):
        graph.head, graph.weight = torch.tensor([head]), torch.tensor([weight], dtype=torch.float64)
    batch = Batch.from_data_list(graphs)
    reference, _ = loss_fn(potential(batch, compute_stress=True, create_graph=True), batch)
    expected = torch.autograd.grad(reference, list(potential.parameters()))
    prediction = potential(batch, compute_stress=True)
    ones = batch.clone()
    ones.weight = torch.ones_like(batch.weight)
    unweighted, _ = loss_fn(prediction, ones)
    assert not torch.isclose(reference, unweighted)  # the weights count
    loss, _ = GraphedLoss(potential, loss_fn, compute_stress=True, capture=False)(batch)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    potential.zero_grad(set_to_none=True)
    loss.backward()
    for p, g in zip(potential.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_two_ranks_of_the_padded_loss_average_to_the_global_batch_gradient(rng):
    """Data parallel: each rank's graphed loss divides by the global batch's counts, so the mean
    of the two ranks' gradients (DDP's all-reduce) is the gradient of the one-process loss."""
    from mlip.training.loss import label_counts

    torch.set_default_dtype(torch.float64)
    try:
        potential = make_tiny_potential(correlation=2)
    finally:
        torch.set_default_dtype(torch.float32)
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=5.0)
    graphs = [_labelled(random_alloy(rng), "a", potential.r_max), _labelled(random_cluster(rng), "c", potential.r_max),
              _labelled(random_cluster(rng), "d", potential.r_max), _labelled(random_alloy(rng), "b", potential.r_max)]
    graphs[1].forces_mask[::2] = False
    ranks = [Batch.from_data_list(graphs[:1]), Batch.from_data_list(graphs[1:])]  # uneven: 1 and 3 structures
    whole = Batch.from_data_list(graphs)
    reference, _ = loss_fn(potential(whole, compute_stress=True, create_graph=True), whole)
    expected = torch.autograd.grad(reference, list(potential.parameters()))

    graphed = GraphedLoss(potential, loss_fn, compute_stress=True, capture=False, world_size=2)
    assert graphed.terms == ["energy", "forces", "stress"]
    total = sum(label_counts(rank, graphed.terms) for rank in ranks)  # what the all-reduce returns
    gradients = []
    for rank in ranks:
        potential.zero_grad(set_to_none=True)
        loss, _ = graphed(rank, lambda local: total.to(local.dtype))
        loss.backward()
        gradients.append([p.grad.clone() for p in potential.parameters()])
    for g0, g1, g in zip(*gradients, expected):
        torch.testing.assert_close((g0 + g1) / 2, g, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="sum_over_ranks"):
        graphed(ranks[0])


def test_capture_counts_survive_releasing_the_training_graphs(rng):
    """The module's capture totals (which PhaseTimes reports per epoch) keep the counts of
    training graphs that were let go (stage two captures its step again)."""
    from mlip.training.module import PotentialModule

    potential = make_tiny_potential()
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=0.0)
    module = PotentialModule(potential, loss_fn, cuda_graphs=True, cuda_graph_buckets=1)
    batches = [Batch.from_data_list([_labelled(random_alloy(rng, (n, 1, 1)), f"s{n}", potential.r_max)]) for n in (1, 3)]
    module.graphed_loss = GraphedLoss(potential, loss_fn, max_graphs=1, capture=False)  # as a CUDA step builds it
    for batch in batches + batches[:1]:  # three sizes in a row through one kept graph: two evictions
        module.graphed_loss(batch)
    first = module.graph_capture_stats()
    assert (first["captures"], first["evictions"]) == (3, 2) and first["capture_s"] > 0
    module.release_training_graphs()
    assert module.graphed_loss is None and module.graph_capture_stats() == first
    module.graphed_loss = GraphedLoss(potential, loss_fn, max_graphs=1, capture=False)
    module.graphed_loss(batches[0])
    assert module.graph_capture_stats()["captures"] == 4
    assert module.graphed_loss.graphs.stats()["captures"] == 1


@pytest.mark.parametrize("path", ["_fill_from_host", "_fill_on_device"])
def test_a_bucket_refilled_with_a_smaller_batch_holds_what_a_fresh_one_does(rng, path):
    """After a large batch, a smaller one in the same bucket leaves every buffer as a freshly
    made bucket would: the host image is written whole, padding included; the device path
    resets only the entries the last fill held past the new counts. Both paths leave the
    same bytes (``fill`` takes the first for a batch on the host, the second for one on the GPU)."""
    from mlip.training.cuda_graph_loss import PaddedLabels

    potential = make_tiny_potential(correlation=2)
    big = Batch.from_data_list([_labelled(random_alloy(rng), "a", potential.r_max),
                                _labelled(random_cluster(rng), "c", potential.r_max),
                                _labelled(random_alloy(rng), "b", potential.r_max)])
    small = Batch.from_data_list([_labelled(random_cluster(rng), "d", potential.r_max)])
    key = (big.num_nodes + 8, big.edge_index.shape[1] + 8, 4)

    def filled(*batches, how=path):
        labels = PaddedLabels(*key, potential.r_max, "cpu", torch.float32)
        for batch in batches:
            *tensors, _ = potential.inputs(batch, True)
            getattr(labels, how)(*tensors, batch)
        return labels

    reused, fresh = filled(big, small), filled(small)
    assert reused.counts == fresh.counts == (small.num_nodes, small.edge_index.shape[1], 1)
    for name in ("species", "positions", "batch", "edge_index", "shifts", "cell", "energy", "natoms", "has_energy",
                 "forces", "forces_mask", "stress", "has_stress", "global_counts"):
        torch.testing.assert_close(getattr(reused, name), getattr(fresh, name), rtol=0, atol=0, msg=name)
    other = "_fill_on_device" if path == "_fill_from_host" else "_fill_from_host"
    for batches in ((big,), (big, small), (small, big)):
        assert torch.equal(filled(*batches).flat, filled(*batches, how=other).flat)
    assert not torch.equal(filled(big).positions, fresh.positions)  # the large batch did write past the small one


def test_padded_sizes_advice_counts_the_epochs_buckets_from_the_data_modules_batches(tmp_path):
    """Batches of 8 random crystals of 4-64 atoms: nearly each its own padded size."""
    from ase.io import write

    from mlip.data.crystals import make_crystals
    from mlip.data.datamodule import AtomicDataModule
    from mlip.models.cuda_graph import STEPS_PER_OCTAVE, bucket_of
    from mlip.training.cuda_graph_loss import padded_sizes_advice

    write(tmp_path / "crystals.xyz", make_crystals(60, seed=3, max_atoms=64))
    by_count = AtomicDataModule(str(tmp_path / "crystals.xyz"), r_max=4.0, batch_size=8, val_fraction=0.1,
                                test_fraction=0.0)
    by_count.setup()
    totals = by_count.batch_totals("train")
    # the totals are those of the loader's own batches (the epoch's first order)
    loaded = np.array([(b.num_nodes, b.edge_index.shape[1], b.num_graphs) for b in by_count.train_dataloader()])
    np.testing.assert_array_equal(totals, loaded)
    sizes = {bucket_of(*map(int, row), STEPS_PER_OCTAVE) for row in totals}
    assert len(sizes) > 4  # nearly every batch its own padded size
    advice = padded_sizes_advice(totals, kept=4)
    assert f"{len(sizes)} padded sizes" in advice and f"data.max_edges={int(totals[:, 1].mean())}" in advice
    assert padded_sizes_advice(totals, kept=len(sizes)) is None



def test_packed_crystal_batches_share_one_padded_shape_and_their_loss_is_the_eager_one(tmp_path):
    """Crystals of 4-64 atoms packed to one budget: every batch of an epoch, the short ones
    included, pads to the one static shape (one captured step), with the eager loss and gradients."""
    from ase.io import write

    from ase.data import atomic_numbers

    from mlip.data.crystals import ELEMENTS, make_crystals
    from mlip.data.datamodule import AtomicDataModule
    from mlip.models.cuda_graph import static_shape
    from mlip.models.potential import Potential
    from mlip.models.registry import build_model
    from tests.conftest import tiny_model_spec

    write(tmp_path / "crystals.xyz", make_crystals(40, seed=3, max_atoms=64))
    torch.manual_seed(0)
    spec = tiny_model_spec(num_elements=len(ELEMENTS))
    numbers = [int(atomic_numbers[s]) for s in ELEMENTS]
    potential = Potential(build_model(spec), numbers, np.linspace(-3.0, -1.0, len(ELEMENTS)).tolist(), scale=1.7,
                          shift=0.3, model_spec=spec)
    data = AtomicDataModule(str(tmp_path / "crystals.xyz"), r_max=potential.r_max, batch_size=4, packed=True,
                            val_fraction=0.1, test_fraction=0.0)
    data.setup()
    shape = static_shape(data.batch_budget("train"))
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=1.0)
    graphed = GraphedLoss(potential, loss_fn, compute_stress=True, capture=False, shape=shape)
    batches = list(data.train_dataloader())
    assert len({(b.num_nodes, b.edge_index.shape[1]) for b in batches}) > 3  # the batches differ ...
    for batch in batches[:3]:
        reference, _ = loss_fn(potential(batch, compute_stress=True, create_graph=True), batch)
        expected = torch.autograd.grad(reference, list(potential.parameters()))
        assert_graphed_loss_matches(graphed, potential, batch, reference, expected)
    for batch in batches[3:]:
        graphed(batch)
    assert list(graphed.graphs.buckets) == [shape] and graphed.graphs.captures == 1  # ... one shape holds them all
