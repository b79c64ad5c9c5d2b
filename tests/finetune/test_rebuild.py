"""Element subsetting and new heads leave every kept prediction unchanged (float64 round-off)."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.finetune.rebuild import RebuildError, rebuild_potential
from tests.conftest import ELEMENTS, FOUNDATION_PARTS, MH1_PARTS, make_tiny_potential, random_alloy

KEPT = [ELEMENTS[0], ELEMENTS[2]]  # Ni and Au of the Ni/Cu/Au test models


def _graphs(rng, elements, count=3):
    graphs = []
    for k in range(count):
        atoms = random_alloy(rng, (2, 1, 1))
        atoms.numbers = rng.choice(elements, size=len(atoms))
        graphs.append(structure_to_graph(structure_from_atoms(atoms, f"alloy{k}"), 4.0))
    return Batch.from_data_list(graphs)


def _predict(potential, batch):
    out = potential(batch, compute_forces=True, compute_stress=True)
    return {k: out[k].detach() for k in ("energy", "forces", "stress")}


def _assert_same(a, b, rtol=1e-11):
    for key in a:
        scale = a[key].abs().max().clamp(min=1.0)
        assert torch.allclose(a[key], b[key], rtol=0, atol=rtol * float(scale)), key


@pytest.mark.parametrize("parts", [{}, FOUNDATION_PARTS, MH1_PARTS, {"residual_first": False}],
                         ids=["mace", "mp0b3-parts", "mh1-parts", "element-skip-first"])
def test_cutting_elements_keeps_the_predictions_of_the_kept_ones(rng, parts):
    potential = make_tiny_potential(seed=3, **parts)
    batch = _graphs(rng, KEPT)
    cut = rebuild_potential(potential, KEPT)
    assert cut.elements.tolist() == sorted(KEPT) and cut.model_spec["kwargs"]["num_elements"] == 2
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in potential.parameters())
    _assert_same(_predict(potential, batch), _predict(cut, batch))


def test_a_second_head_starts_as_a_copy_and_each_structure_takes_its_own(rng):
    potential = make_tiny_potential(seed=4, **FOUNDATION_PARTS)
    batch = _graphs(rng, ELEMENTS)
    reference = _predict(potential, batch)
    two = rebuild_potential(potential, heads=[("foundation", 0), ("finetune", 0)])
    assert two.heads == ["foundation", "finetune"]
    _assert_same(reference, _predict(two, batch))
    two.select_head("finetune")
    _assert_same(reference, _predict(two, batch))
    # move the new head's readouts, E0s and shift: a structure marked head 0 keeps the foundation's energy
    with torch.no_grad():
        two.model.readouts[0].linear.weight.view(-1, 2)[:, 1] *= 1.5
        two.head_shift[1] += 0.2
    batch.head = torch.tensor([0, 1, 0])
    mixed = two(batch, compute_forces=True)
    assert torch.allclose(mixed["energy"][[0, 2]], reference["energy"][[0, 2]], rtol=1e-12)
    assert not torch.allclose(mixed["energy"][1], reference["energy"][1])
    batch.head = torch.tensor([1, 1, 1])
    all_new = two(batch)["energy"].detach()
    del batch.head
    two.select_head("finetune")  # the same as choosing it for every structure
    assert torch.allclose(all_new, two(batch)["energy"].detach(), rtol=1e-12)
    assert torch.allclose(all_new[1], mixed["energy"][1].detach(), rtol=1e-12)


def test_one_head_of_a_multi_head_model_and_back_to_two(rng):
    potential = rebuild_potential(make_tiny_potential(seed=5), heads=[("a", 0), ("b", 0)])
    with torch.no_grad():
        potential.model.readouts[1].linear_in.weight.mul_(0.5)  # heads a and b now differ
        potential.head_e0s[1] -= 0.1
    batch = _graphs(rng, ELEMENTS)
    potential.select_head("b")
    expected = _predict(potential, batch)
    single = rebuild_potential(potential, heads=[("b", 1)])
    assert not single.heads
    _assert_same(expected, _predict(single, batch))
    again = rebuild_potential(single, KEPT, heads=[("b", 0), ("new", 0)])
    _assert_same(_predict(single, _graphs(np.random.default_rng(1), KEPT)), _predict(again, _graphs(np.random.default_rng(1), KEPT)))


def test_an_element_the_model_lacks_is_refused():
    with pytest.raises(RebuildError, match=r"not \['O'\]"):
        rebuild_potential(make_tiny_potential(), [ELEMENTS[0], 8])


def test_heads_on_a_model_family_without_them_are_refused():
    from mlip.models.potential import Potential
    from mlip.models.registry import build_model

    spec = {"target": "mlip.models.facet.Facet", "kwargs": dict(
        num_elements=3, avg_num_neighbors=10.0, r_max=4.0, spline_basis=8, max_ell=1, hidden_irreps="4x0e+4x1o",
        num_interactions=1, grid_hidden=8, grid_resolution=3, readout_mlp=4)}
    facet = Potential(build_model(spec), ELEMENTS, [0.0] * 3, model_spec=spec)
    with pytest.raises(RebuildError, match="no heads"):
        rebuild_potential(facet, heads=[("a", 0), ("b", 0)])
    cut = rebuild_potential(facet, KEPT)  # elements are cut for every family
    assert cut.elements.tolist() == sorted(KEPT)


def test_a_mace_torch_file_starts_a_run_from_the_head_asked_for(rng):
    """`load_pretrained` on a two-head mace-torch .model: the head given, as a single-head model
    predicting what that head of the converted file predicts."""
    from pathlib import Path

    from mlip.convert.mace_torch import convert_mace_torch
    from mlip.finetune.pretrained import PretrainedError, load_pretrained

    model = Path(__file__).parents[1] / "convert" / "mace_torch_oracle" / "scaleshift_two_heads_nu2_l1_f64.model"
    both = convert_mace_torch(model, "all")
    both.select_head("r2scan")
    start = load_pretrained(model, head="r2scan")
    assert not start.heads
    z = both.elements.tolist()
    batch = _graphs(rng, z[:2] if len(z) > 1 else z)
    _assert_same(_predict(both, batch), _predict(start, batch))
    with pytest.raises(PretrainedError, match=r"model.head=hse: .* has heads \['pbe', 'r2scan'\]"):
        load_pretrained(model, head="hse")
