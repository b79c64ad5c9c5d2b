"""The sphere grid: exact quadrature to its degree, and grid MLPs whose equivariance error falls with resolution."""

import math

import pytest
import torch
from e3nn import o3

from mlip.nn.grid_mlp import SphericalGridMLP
from mlip.nn.spherical import SphericalGrid, product_grid


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_product_grid_is_exact_to_degree_2n_minus_1_and_no_further(n):
    points, weights = product_grid(n)
    assert points.shape == (2 * n * n, 3) and torch.allclose(points.norm(dim=1), torch.ones(1, dtype=points.dtype))
    assert float(weights.sum()) == pytest.approx(4 * math.pi, rel=1e-14)
    z = points[:, 2]
    for degree in range(2 * n + 1):  # ∫ z^d dΩ = 4π/(d+1) for even d, 0 for odd d
        exact = 4 * math.pi / (degree + 1) if degree % 2 == 0 else 0.0
        value = float((weights * z**degree).sum())
        if degree <= 2 * n - 1:
            assert value == pytest.approx(exact, abs=1e-13), degree
        else:
            assert abs(value - exact) > 1e-3, degree  # degree 2n: the grid is not exact any more


def test_sampling_then_projecting_is_the_identity_up_to_the_band_limit():
    grid = SphericalGrid(o3.Irreps("0e+1o+2e+3o"))
    assert grid.resolution == 4 and grid.exact_degree == 7
    coefficients = torch.randn(5, 16)
    torch.testing.assert_close(grid.from_grid(grid.to_grid(coefficients)), coefficients, rtol=0, atol=1e-13)
    coarse = SphericalGrid(o3.Irreps("0e+1o+2e+3o"), resolution=3)  # exact to degree 5 < 2L = 6
    assert (coarse.from_grid(coarse.to_grid(coefficients)) - coefficients).abs().max() > 1e-3


def test_rotating_the_coefficients_rotates_the_sampled_function():
    irreps = o3.Irreps("0e+1o+2e")
    grid, rotation = SphericalGrid(irreps), o3.rand_matrix()
    coefficients = torch.randn(3, irreps.dim)
    # f'(x) = f(Rᵀ x): the rotated coefficients at x equal the old ones at Rᵀ x
    rotated = coefficients @ irreps.D_from_matrix(rotation).T
    sample_at = lambda c, x: c @ o3.spherical_harmonics(irreps, x, True, "integral").T  # noqa: E731
    torch.testing.assert_close(sample_at(rotated, grid.points), sample_at(coefficients, grid.points @ rotation),
                               rtol=0, atol=1e-12)


def test_pseudo_tensors_are_refused_with_the_irreps_named():
    with pytest.raises(ValueError, match="1e are not functions on the sphere"):
        SphericalGrid(o3.Irreps("0e+1e"))


def _equivariance_error(layer, irreps):
    x = torch.randn(16, irreps.dim, generator=torch.Generator().manual_seed(1))
    errors = []
    for seed in range(3):
        torch.manual_seed(seed)
        D = irreps.D_from_matrix(o3.rand_matrix())
        out = layer(x)
        errors.append(float((layer(x @ D.T) - out @ D.T).abs().max() / out.abs().max()))
    return max(errors)


@pytest.mark.parametrize("hidden", [16, [16, 12]])
def test_grid_mlp_without_activation_is_equivariant_to_round_off(hidden):
    irreps = o3.Irreps("8x0e+8x1o+8x2e")
    torch.manual_seed(0)
    layer = SphericalGridMLP(irreps, hidden, activation=False)
    assert len(layer.mlp) == 2 * (1 if isinstance(hidden, int) else len(hidden)) + 1  # every hidden layer is built
    assert _equivariance_error(layer, irreps) < 1e-13


def test_grid_mlp_equivariance_error_falls_as_the_grid_is_refined():
    irreps = o3.Irreps("8x0e+8x1o+8x2e")
    errors = []
    for resolution in (3, 4, 6, 10, 14):
        torch.manual_seed(0)  # the same MLP weights on every grid
        errors.append(_equivariance_error(SphericalGridMLP(irreps, 16, resolution), irreps))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-5, errors


def test_grid_mlp_is_smooth_and_differentiable_twice():
    irreps = o3.Irreps("2x0e+2x1o")
    torch.manual_seed(0)
    layer = SphericalGridMLP(irreps, 4, 4)
    x = irreps.randn(3, -1).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,)) and torch.autograd.gradgradcheck(layer, (x,))


def test_grid_mlp_onto_other_degrees_builds_invariants_from_higher_ones():
    # ℓ ≤ 3 in, ℓ ≤ 1 out: linear maps stay exact; the activation makes Σ_m h_2m h_2m-like
    # invariants, so features of degree 2 alone reach the ℓ = 0 output
    irreps_in, irreps_out = o3.Irreps("4x0e+4x1o+4x2e+4x3o"), o3.Irreps("4x0e+4x1o")
    torch.manual_seed(0)
    linear = SphericalGridMLP(irreps_in, 8, activation=False, irreps_out=irreps_out)
    assert linear.grid.exact_degree >= 4
    x = torch.randn(6, irreps_in.dim)
    rotation = o3.rand_matrix()
    D_in, D_out = irreps_in.D_from_matrix(rotation), irreps_out.D_from_matrix(rotation)
    torch.testing.assert_close(linear(x @ D_in.T), linear(x) @ D_out.T, rtol=0, atol=1e-12)
    only_l2 = torch.zeros(6, irreps_in.dim)
    only_l2[:, irreps_in.slices()[2]] = torch.randn(6, 20)
    scalars = irreps_out.slices()[0]
    assert linear(only_l2)[:, scalars].abs().max() < 1e-12  # linear: degrees do not mix
    nonlinear = SphericalGridMLP(irreps_in, 8, resolution=8, irreps_out=irreps_out)
    assert nonlinear(only_l2)[:, scalars].abs().max() > 1e-2


@pytest.mark.parametrize("hidden", [16, [16, 12]])
def test_grid_mlp_equals_the_mlp_applied_at_every_grid_point(hidden):
    """The layer mixes channels before sampling and after projecting; the paper's order samples
    the features on the grid, runs the whole MLP at each point and projects (float64)."""
    irreps_in, irreps_out = o3.Irreps("6x0e+6x1o+6x2e+6x3o"), o3.Irreps("5x0e+5x1o+5x2e")
    torch.manual_seed(0)
    layer = SphericalGridMLP(irreps_in, hidden, resolution=5, irreps_out=irreps_out)
    x = torch.randn(7, irreps_in.dim)
    values = layer.grid.to_grid(layer.layout.to_channels(x)).transpose(1, 2)  # [n, G, C]
    assert values.shape[1] == 50
    expected = layer.layout_out.from_channels(layer.grid.from_grid(layer.mlp(values).transpose(1, 2)))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-13)
