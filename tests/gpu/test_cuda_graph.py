"""CUDA-graph replay and sync-free prediction, on the device machine."""

import pytest
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.cuda_graph import GraphedPotential
from tests.conftest import assert_graphed_loss_matches, make_tiny_potential, random_alloy, random_cluster

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _graph(atoms, potential):
    return structure_to_graph(structure_from_atoms(atoms, "t"), potential.r_max).to("cuda")


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_replayed_graph_equals_eager_across_calls_and_sizes(backend, rng):
    potential = make_tiny_potential(correlation=3, tp_backend=backend).cuda().requires_grad_(False)
    graphed = GraphedPotential(potential)
    for repeat in [(2, 2, 2), (2, 2, 2), (2, 2, 1), (3, 2, 2)]:  # reuse, a smaller and a larger bucket
        atoms = random_alloy(rng, repeat)
        graph = _graph(atoms, potential)
        out, reference = graphed(graph), potential(graph, compute_stress=True)
        for key in ("energy", "node_energy", "forces", "stress"):
            torch.testing.assert_close(out[key], reference[key], rtol=1e-10, atol=1e-10)
    assert all(entry[1] is not None for entry in graphed.graphs.buckets.values())  # captured, not eager
    batch = Batch.from_data_list([_graph(random_cluster(rng), potential), _graph(random_alloy(rng), potential)])
    out, reference = graphed(batch), potential(batch, compute_stress=True)
    torch.testing.assert_close(out["forces"], reference["forces"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_a_model_moved_off_and_back_is_captured_again(backend, rng):
    """Lightning's teardown moves the module to the CPU after a fit and the test moves it back:
    graphs captured before read the weights' old, freed addresses unless they are dropped."""
    potential = make_tiny_potential(correlation=3, tp_backend=backend).cuda().requires_grad_(False)
    graphed = GraphedPotential(potential)
    graph = _graph(random_alloy(rng, (2, 2, 2)), potential)
    graphed(graph)
    potential.cpu()
    potential.cuda()
    clutter = [torch.full((1 << 16,), float("nan"), device="cuda") for _ in range(64)]  # reuse the freed blocks
    out, reference = graphed(graph), potential(graph, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], reference[key], rtol=1e-10, atol=1e-10)
    assert graphed.graphs.evictions == 1 and graphed.graphs.captures == 2
    del clutter


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_prediction_does_not_synchronise_with_the_host(backend, rng):
    potential = make_tiny_potential(correlation=3, tp_backend=backend).cuda()
    graph = _graph(random_alloy(rng, (2, 2, 2)), potential)
    species = potential.species(graph.atomic_numbers)
    batch = torch.zeros_like(species)
    args = (species, graph.positions, graph.cell.view(-1, 3, 3), batch, graph.edge_index, graph.shifts, 1)
    potential.predict(*args, compute_stress=True, create_graph=True)  # lazy initialisation outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = potential.predict(*args, compute_stress=True, create_graph=True)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        torch.autograd.grad(loss, list(potential.parameters()), allow_unused=True)  # the training double backward
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", ["e3nn", "cueq"])
def test_graphed_training_steps_follow_the_eager_ones(backend, rng):
    from ase.calculators.emt import EMT

    from mlip.training.cuda_graph_loss import GraphedLoss
    from mlip.training.loss import EnergyForcesStressLoss

    def labelled(atoms):
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        return _graph(atoms, eager)

    eager = make_tiny_potential(correlation=3, tp_backend=backend).cuda()
    graphed_model = make_tiny_potential(correlation=3, tp_backend=backend).cuda()
    graphed_model.load_state_dict(eager.state_dict())
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=1.0)
    graphed = GraphedLoss(graphed_model, loss_fn, compute_stress=True)
    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, graphed_model)]
    for step in range(4):
        batch = Batch.from_data_list([labelled(random_alloy(rng, (2, 2, 1 + step % 2))) for _ in range(3)])
        for model, optimiser in zip((eager, graphed_model), optimisers):
            optimiser.zero_grad(set_to_none=True)
            if model is eager:
                loss, _ = loss_fn(model(batch, compute_stress=True, create_graph=True), batch)
            else:
                loss, _ = graphed(batch)
            loss.backward()
            optimiser.step()
    for a, b in zip(eager.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert all(entry[1] is not None for entry in graphed.graphs.buckets.values())


def test_foundation_parts_and_heads_switched_under_a_captured_graph_equal_the_cpu(rng):
    """Density blocks, Agnesi, ZBL and a two-head readout on CUDA with CUDA graphs: the head is
    switched between replays (in place) and each call equals the float64 CPU prediction."""
    import numpy as np
    from pathlib import Path

    from mlip.calculator import MLIPCalculator
    from mlip.convert.mace_torch import convert_mace_torch

    oracle = Path(__file__).resolve().parents[1] / "convert" / "mace_torch_oracle"
    cpu = MLIPCalculator(convert_mace_torch(oracle / "scaleshift_two_heads_nu2_l1_f64.model", head="all"))
    gpu = MLIPCalculator(convert_mace_torch(oracle / "scaleshift_two_heads_nu2_l1_f64.model", head="all"),
                         device="cuda", dtype="float64")
    zbl = MLIPCalculator(convert_mace_torch(oracle / "scaleshift_density_agnesi_zbl_nu3_l1_f64.model"),
                         device="cuda", dtype="float64")
    zbl_cpu = MLIPCalculator(convert_mace_torch(oracle / "scaleshift_density_agnesi_zbl_nu3_l1_f64.model"))
    from ase.io import read

    for atoms in read(oracle / "structures.extxyz", ":"):
        for head in ("r2scan", "pbe"):
            cpu.select_head(head)
            gpu.select_head(head)
            a, b = atoms.copy(), atoms.copy()
            a.calc, b.calc = cpu, gpu
            assert np.isclose(a.get_potential_energy(), b.get_potential_energy(), rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-9, atol=1e-10)
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = zbl_cpu, zbl
        assert np.isclose(a.get_potential_energy(), b.get_potential_energy(), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-9, atol=1e-10)
    assert gpu.graphed is not None and zbl.graphed is not None


def test_a_captured_two_head_loss_with_replay_weights_equals_the_eager_one(rng):
    """Fine-tuning with replay under CUDA graphs: per-structure heads and loss weights in the
    captured buffers give the eager loss and gradients."""
    from ase.calculators.emt import EMT

    from mlip.finetune.rebuild import rebuild_potential
    from mlip.training.cuda_graph_loss import GraphedLoss
    from mlip.training.loss import EnergyForcesStressLoss

    potential = rebuild_potential(make_tiny_potential(correlation=3), heads=[("foundation", 0), ("finetune", 0)]).cuda()
    with torch.no_grad():
        potential.head_shift[1] += 0.3
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=1.0)
    graphed = GraphedLoss(potential, loss_fn, compute_stress=True)
    for step in range(3):
        graphs = []
        for k in range(3):
            atoms = random_alloy(rng, (2, 2, 1 + step % 2))
            atoms.calc = EMT()
            atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
            graph = _graph(atoms, potential)
            graph.head = torch.tensor([k % 2], device="cuda")
            graph.weight = torch.tensor([1.0 + k], dtype=torch.float64, device="cuda")
            graphs.append(graph)
        batch = Batch.from_data_list(graphs)
        reference, expected = _eager_loss_and_gradients(potential, loss_fn, batch)
        assert_graphed_loss_matches(graphed, potential, batch, reference, expected)
    assert all(entry[1] is not None for entry in graphed.graphs.buckets.values())


def _eager_loss_and_gradients(potential, loss_fn, batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The eager loss and its parameter gradients, no autograd graph outliving the call: a live
    graph built on the default stream holds the parameters' AccumulateGrad nodes there, and the
    capture of a new size then fails (cudaErrorStreamCaptureImplicit)."""
    reference, _ = loss_fn(potential(batch, compute_stress=True, create_graph=True), batch)
    return reference.detach(), torch.autograd.grad(reference, list(potential.parameters()))
