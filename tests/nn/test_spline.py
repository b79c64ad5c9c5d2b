"""The spline radial layer's pure-torch path: values and derivatives against SciPy and finite differences."""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from mlip.nn.kernels.spline import evaluate_torch, knot_spacing, scatter_torch, spline_contract
from mlip.nn.radial import SplineRadial

R_MAX, K, C = 5.0, 9, 4


def _scipy_splines(weights: np.ndarray) -> list[BSpline]:
    """One SciPy B-spline per channel on the same uniform knots (an independent reference)."""
    h = knot_spacing(K, R_MAX)
    knots = (np.arange(K + 4) - 3) * h
    return [BSpline(knots, weights[:, c], 3, extrapolate=True) for c in range(weights.shape[1])]


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    r = torch.cat([torch.rand(200) * R_MAX, torch.tensor([0.0, R_MAX, 2 * knot_spacing(K, R_MAX)])])
    return r, torch.randn(K, C)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_values_and_derivatives_match_scipy(inputs, order):
    r, w = inputs
    ours = evaluate_torch(r, w, knot_spacing(K, R_MAX), order).numpy()
    reference = np.stack([s.derivative(order)(r.numpy()) if order else s(r.numpy()) for s in _scipy_splines(w.numpy())], 1)
    assert np.allclose(ours, reference, rtol=1e-10, atol=1e-10)


def test_scatter_is_the_transpose_of_evaluate(inputs):
    r, w = inputs
    g = torch.randn(r.shape[0], C)
    h = knot_spacing(K, R_MAX)
    for order in range(4):
        lhs = (evaluate_torch(r, w, h, order) * g).sum()
        rhs = (w * scatter_torch(r, g, h, order, K)).sum()
        assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_first_and_second_derivatives_against_finite_differences(inputs):
    r, w = inputs
    r = r[(r > 0.01) & (r < R_MAX - 0.01)].clone().requires_grad_(True)
    values = spline_contract(r, w, R_MAX)
    (first,) = torch.autograd.grad(values[:, 1].sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), r)
    eps = 1e-5
    f = lambda x: spline_contract(x, w, R_MAX)[:, 1]  # noqa: E731
    with torch.no_grad():
        fd1 = (f(r + eps) - f(r - eps)) / (2 * eps)
        fd2 = (f(r + eps) - 2 * f(r) + f(r - eps)) / eps**2
    assert torch.allclose(first, fd1, atol=1e-8)
    assert torch.allclose(second, fd2, atol=1e-4)


def test_twice_continuously_differentiable_across_knots():
    w = torch.randn(K, C)
    h = knot_spacing(K, R_MAX)
    knots = torch.arange(1, K - 3) * h
    for order in range(3):
        left = evaluate_torch(knots - 1e-12, w, h, order)
        right = evaluate_torch(knots + 1e-12, w, h, order)
        assert torch.allclose(left, right, atol=1e-9), order


def test_gradcheck_and_gradgradcheck_in_both_arguments(inputs):
    r, w = inputs
    r = r[:20].clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    fn = lambda x, y: spline_contract(x, y, R_MAX, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (r, w))
    assert torch.autograd.gradgradcheck(fn, (r, w))


def test_force_training_pattern_has_weight_gradients(inputs):
    """Energy from radial weights, forces by autograd, a loss on forces, gradients to the weights."""
    r, w = inputs
    r = r.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    energy = (spline_contract(r, w, R_MAX) ** 2).sum()
    (forces,) = torch.autograd.grad(energy, r, create_graph=True)
    (grad_w,) = torch.autograd.grad((forces**2).sum(), w)
    assert grad_w.abs().sum() > 0 and torch.isfinite(grad_w).all()


def test_spline_radial_layer_vanishes_at_the_cutoff():
    layer = SplineRadial(R_MAX, num_basis=8, out_features=6)
    r = torch.tensor([0.5, 2.0, R_MAX - 1e-9, R_MAX, R_MAX + 0.3])
    out = layer(r)
    assert out.shape == (5, 6) and torch.all(out[3:] == 0) and torch.allclose(out[2], torch.zeros(6), atol=1e-12)
    with pytest.raises(ValueError, match="at least 4"):
        SplineRadial(R_MAX, num_basis=3, out_features=2)
