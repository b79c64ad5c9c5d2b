import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from mlip.training.ema import ExponentialMovingAverage
from mlip.training.loss import EnergyForcesStressLoss
from mlip.training.metrics import PotentialMetrics


def _batch():
    g1 = Data(
        energy=torch.tensor([1.0]), natoms=torch.tensor([2]), forces=torch.tensor([[1.0, 0, 0], [0, 0, 0]]),
        stress=torch.zeros(1, 3, 3), has_energy=torch.tensor([True]), forces_mask=torch.tensor([True, True]),
        has_stress=torch.tensor([True]), num_nodes=2,
    )
    g2 = Data(
        energy=torch.tensor([0.0]), natoms=torch.tensor([1]), forces=torch.zeros(1, 3),
        stress=torch.zeros(1, 3, 3), has_energy=torch.tensor([True]), forces_mask=torch.tensor([False]),
        has_stress=torch.tensor([False]), num_nodes=1,
    )
    return Batch.from_data_list([g1, g2])


def _pred():
    stress = torch.zeros(2, 3, 3)
    stress[0, 0, 0], stress[1, 1, 1] = 0.3, 100.0  # the second graph has no stress label
    forces = torch.tensor([[1.5, 0, 0], [0, -1.0, 0], [50.0, 0, 0]])  # atom 2 has no force label
    return {"energy": torch.tensor([2.0, -3.0]), "forces": forces, "stress": stress}


def test_mse_loss_by_hand_ignores_unlabelled_entries():
    loss = EnergyForcesStressLoss(energy_weight=2.0, forces_weight=3.0, stress_weight=5.0)
    total, terms = loss(_pred(), _batch())
    energy = ((1.0 / 2) ** 2 + (-3.0) ** 2) / 2  # per-atom errors 0.5 and -3
    forces = (0.5**2 + 1.0**2) / 6  # 6 labelled components of graph 1
    stress = 0.3**2 / 9
    assert terms["energy"].item() == pytest.approx(2 * energy)
    assert terms["forces"].item() == pytest.approx(3 * forces)
    assert terms["stress"].item() == pytest.approx(5 * stress)
    assert total.item() == pytest.approx(2 * energy + 3 * forces + 5 * stress)


def test_huber_loss_is_quadratic_inside_delta_and_linear_outside():
    loss = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=0.0, kind="huber", huber_delta=1.0)
    _, terms = loss(_pred(), _batch())
    expected = (0.5 * 0.5**2 + 1.0 * (3.0 - 0.5)) / 2
    assert terms["energy"].item() == pytest.approx(expected)


def test_metrics_accumulate_over_batches_by_hand():
    metrics = PotentialMetrics()
    metrics.update(_pred(), _batch())
    metrics.update(_pred(), _batch())  # the same again: means unchanged
    out = metrics.compute()
    assert out["energy_mae"] == pytest.approx((0.5 + 3.0) / 2)
    assert out["energy_rmse"] == pytest.approx(((0.25 + 9.0) / 2) ** 0.5)
    assert out["forces_mae"] == pytest.approx(1.5 / 6)
    assert out["forces_rmse"] == pytest.approx((1.25 / 6) ** 0.5)
    assert out["stress_mae"] == pytest.approx(0.3 / 9)


def test_metrics_of_a_multi_head_model_are_kept_per_head_too():
    metrics = PotentialMetrics(["foundation", "finetune"])
    batch = _batch()
    batch.head = torch.tensor([1, 0])  # the first structure under the new head, the second the foundation's
    metrics.update(_pred(), batch)
    out = metrics.compute()
    assert out["energy_mae"] == pytest.approx((0.5 + 3.0) / 2)
    assert out["finetune_energy_mae"] == pytest.approx(0.5) and out["foundation_energy_mae"] == pytest.approx(3.0)
    assert out["finetune_forces_mae"] == pytest.approx(1.5 / 6)
    assert "foundation_forces_mae" not in out  # its one atom has no force label
    assert out["finetune_stress_mae"] == pytest.approx(0.3 / 9) and "foundation_stress_mae" not in out
    assert set(PotentialMetrics(["only"]).compute()) == set()  # one head: no per-head names


def test_ema_follows_the_documented_recursion():
    model = nn.Linear(2, 1, bias=False)
    ema = ExponentialMovingAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # n=0: d = min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.module.weight, 0.1 * start + 0.9 * (start + 1.0))
    ema.update(model)  # n=1: d = 2/11
    expected = 2 / 11 * (0.1 * start + 0.9 * (start + 1.0)) + 9 / 11 * (start + 1.0)
    assert torch.allclose(ema.module.weight, expected)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_matches_weights_by_name_on_a_deep_copied_mace():
    # a deep copy of e3nn's compiled ℓ=3 tensor product holds two extra constant buffers,
    # which shifted every later buffer when the EMA paired them by position
    from tests.conftest import make_tiny_potential

    model = make_tiny_potential(max_ell=3, hidden_irreps="16x0e+16x1o")
    ema = ExponentialMovingAverage(model, decay=0.5)
    assert len(list(ema.module.buffers())) != len(list(model.buffers()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # n=0: d = 0.1
    averaged = dict(ema.module.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(averaged[name], p - 0.1, msg=name)
    for name, b in model.named_buffers():
        torch.testing.assert_close(dict(ema.module.named_buffers())[name], b, msg=name)


def test_weight_decay_applies_to_the_named_parameters_only():
    from mlip.models.mace import MACE
    from mlip.models.potential import Potential
    from mlip.training.loss import EnergyForcesStressLoss
    from mlip.training.module import PotentialModule

    model = MACE(num_elements=2, avg_num_neighbors=4.0, hidden_irreps="4x0e+4x1o", max_ell=1, radial_mlp=[4])
    potential = Potential(model, [1, 8], [0.0, 0.0])
    patterns = ["^model.interactions.*.linear.weight$", "^model.products.*.(contraction|linear)."]
    module = PotentialModule(potential, EnergyForcesStressLoss(), weight_decay=1e-3, weight_decay_params=patterns)
    decay, rest = module.parameter_groups()
    names = {id(p): n for n, p in potential.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert "model.interactions.0.linear.weight" in decayed and "model.products.1.linear.weight" in decayed
    assert not any("linear_up" in n or "radial" in n or "skip" in n or "readouts" in n for n in decayed)
    assert rest["weight_decay"] == 0.0 and len(decay["params"]) + len(rest["params"]) == len(names)
    assert PotentialModule(potential, EnergyForcesStressLoss()).parameter_groups()[0]["params"].__len__() == len(names)
    with pytest.raises(ValueError, match="match no parameter"):
        PotentialModule(potential, EnergyForcesStressLoss(), weight_decay_params=["^nothing"]).parameter_groups()


def test_energy_errors_of_a_float32_model_are_exact_beside_large_e0s(rng):
    # E0s of carbon, oxygen and nitrogen: 32 atoms total about -5e4 eV, whose float32 rounding
    # (a few meV per structure) would swamp the meV errors the loss is fitting. The E0s are
    # exact in float32, so that the float32 model's constants are the float64 model's.
    import copy

    from mlip.data.graph import structure_to_graph
    from mlip.data.readers.atoms import structure_from_atoms
    from mlip.training.errors import label_errors
    from tests.conftest import make_tiny_potential, random_alloy

    potential = make_tiny_potential()
    potential.e0s.copy_(torch.tensor([-1030.515625, -2041.375, -1485.296875]))
    graphs = [structure_to_graph(structure_from_atoms(random_alloy(rng, (2, 2, 2)), "t"), potential.r_max)
              for _ in range(4)]
    batch = Batch.from_data_list(graphs)
    exact = potential(batch, compute_forces=False)["energy"].detach()  # float64
    offsets = torch.tensor([0.0123, -0.0041, 0.0007, -0.0302], dtype=torch.float64)  # eV per structure
    batch.energy = exact - offsets
    single = copy.deepcopy(potential).float()
    pred = single(batch, compute_forces=False)
    error, _ = label_errors(pred, batch)["energy"]
    assert error.dtype == torch.float32
    # what is left is the float32 rounding of the interaction energy alone (tens of eV here)
    assert torch.allclose(error.double() * 32, offsets, atol=2e-5, rtol=0)
    # the total is rounded once: within half a float32 spacing (plus that rounding) of the exact one
    spacing = torch.finfo(torch.float32).eps * exact.abs()
    assert ((pred["energy"].double() - exact).abs() <= 0.5 * spacing + 2e-5).all()
