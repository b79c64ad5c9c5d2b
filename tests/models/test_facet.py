"""Facet: symmetries and derivatives of the potential, the grid's equivariance error, training end to end."""

import csv

import numpy as np
import pytest
import torch
from e3nn import o3

from mlip.cli.train import train
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from tests.conftest import ELEMENTS, compose_train_config, random_alloy, random_cluster
from tests.models.derivatives import assert_translation_and_permutation_invariant, force_pairs, stress_pairs
from tests.models.test_mace_potential import predict


def _facet(**kwargs) -> Potential:
    torch.manual_seed(0)
    spec = {"target": "mlip.models.facet.Facet", "kwargs": dict(
        num_elements=3, avg_num_neighbors=12.0, r_max=4.0, spline_basis=8, max_ell=2, hidden_irreps="4x0e+4x1o",
        grid_hidden=8, readout_mlp=4) | kwargs}
    return Potential(build_model(spec), ELEMENTS, [-1.2, -3.5, -0.7], scale=1.7, shift=0.3, model_spec=spec)


def _rotated(atoms, rotation):
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    out.positions = atoms.positions @ rotation.T
    return out


def _rotation_errors(potential, atoms, rotation):
    ref, out = predict(potential, atoms), predict(potential, _rotated(atoms, rotation))
    relative = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    return (relative(out["energy"], ref["energy"]), relative(out["forces"], ref["forces"] @ rotation.T),
            relative(out["stress"][0], rotation @ ref["stress"][0] @ rotation.T))


def test_equivariance_error_falls_as_the_node_grid_is_refined(rng):
    # avg_num_neighbors=1 gives O(1) features, so the activation is far from linear on the grid
    atoms = random_alloy(rng)
    torch.manual_seed(5)
    rotation = o3.rand_matrix().numpy()
    errors = [
        _rotation_errors(_facet(grid_resolution=n, avg_num_neighbors=1.0, hidden_irreps="4x0e+4x1o+4x2e"), atoms, rotation)
        for n in (2, 3, 4, 8, 16)
    ]
    for k in range(3):  # energy, forces, stress
        series = [e[k] for e in errors]
        assert all(b < a for a, b in zip(series, series[1:])), series
    assert min(errors[0]) > 1e-3 and max(errors[-1]) < 1e-10, errors


def test_with_linear_grid_updates_and_the_grid_product_it_is_equivariant_to_round_off(rng, monkeypatch):
    from mlip.nn import grid_mlp

    monkeypatch.setattr(grid_mlp, "NormalizedSiLU", torch.nn.Identity)  # the linear update: exact on its grid
    for backend in ("e3nn", "grid"):
        potential = _facet(grid_resolution=None, tp_backend=backend)
        for rotation in (o3.rand_matrix().numpy(), -o3.rand_matrix().numpy()):
            assert max(_rotation_errors(potential, random_alloy(rng), rotation)) < 1e-10, backend


def test_element_skip_is_equivariant_and_its_weights_depend_on_the_element(rng, monkeypatch):
    from mlip.nn import grid_mlp

    monkeypatch.setattr(grid_mlp, "NormalizedSiLU", torch.nn.Identity)
    potential = _facet(grid_resolution=None, element_skip=True, grid_hidden=[8, 6])
    for rotation in (o3.rand_matrix().numpy(), -o3.rand_matrix().numpy()):
        assert max(_rotation_errors(potential, random_alloy(rng), rotation)) < 1e-10
    skip = potential.model.self_connections[1]
    features = torch.randn(1, skip.irreps_in1.dim, dtype=torch.float64).repeat(2, 1)
    out = skip(features, torch.tensor([0, 1]))  # the same features on two elements
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_translation_and_permutation_leave_predictions_unchanged(rng):
    assert_translation_and_permutation_invariant(_facet(), random_alloy(rng), rng)


@pytest.mark.parametrize("backend", ["e3nn", "grid"])
def test_forces_and_stress_are_derivatives_of_the_energy(rng, backend):
    potential = _facet(tp_backend=backend)
    for atoms in (random_alloy(rng), random_cluster(rng)):
        for force, fd in force_pairs(potential, atoms):
            assert force == pytest.approx(fd, rel=1e-6, abs=1e-8)
    for stress, fd in stress_pairs(potential, random_alloy(rng)):
        assert stress == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_pseudo_tensor_hidden_irreps_are_refused():
    with pytest.raises(ValueError, match="1e are not functions on the sphere"):
        _facet(hidden_irreps="4x0e+4x1e")


def _val_losses(folder):
    return [float(r["val_loss"]) for r in csv.DictReader(open(folder / "logs" / "metrics.csv")) if r.get("val_loss")]


@pytest.mark.parametrize("backend", ["auto", "grid"])
def test_facet_trains_on_the_emt_default(tmp_path, emt_file, backend):
    metrics = train(compose_train_config(tmp_path, emt_file, "model=facet", f"model.tp_backend={backend}",
                                         "trainer.max_epochs=4"))
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    losses = _val_losses(tmp_path)
    assert min(losses[1:]) < losses[0], losses


def test_facet_trains_on_the_3bpa_sample(tmp_path, dataset_dir):
    folder = dataset_dir / "3bpa"
    cfg = compose_train_config(
        tmp_path, None, "data=3bpa", f"data.train_files={folder / 'train_300K.xyz'}", f"data.e0s={folder / 'iso_atoms.xyz'}",
        "model=facet", "module.loss.stress_weight=0.0", "data.batch_size=16", "trainer.max_epochs=3",
    )
    metrics = train(cfg)
    assert "test_forces_rmse" in metrics and np.isfinite(metrics["test_forces_rmse"])
    losses = _val_losses(tmp_path)
    assert min(losses[1:]) < losses[0], losses


def test_the_grid_product_serves_mace_too(rng):
    # tp_backend=grid anywhere a convolution is built: MACE's interactions take the Gaunt product
    from tests.conftest import make_tiny_potential

    potential = make_tiny_potential(correlation=2, tp_backend="grid", hidden_irreps="4x0e+4x1o")
    assert type(potential.model.interactions[0].convolution).__name__ == "GridConvolution"
    for rotation in (o3.rand_matrix().numpy(), -o3.rand_matrix().numpy()):
        assert max(_rotation_errors(potential, random_alloy(rng), rotation)) < 1e-10
