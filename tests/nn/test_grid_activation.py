"""The fused activation on the sphere: its torch twin against the plain layer, its derivatives, and σ's."""

import pytest
import torch
from e3nn import o3

from mlip.nn.kernels.grid_activation import grid_activation, silu_derivative
from mlip.nn.radial import NormalizedSiLU
from mlip.nn.spherical import SphericalGrid


def _grid(l_in: int = 3, l_out: int = 2, resolution: int = 5) -> SphericalGrid:
    irreps = lambda lmax: o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])  # noqa: E731
    return SphericalGrid(irreps(l_in), resolution, irreps_out=irreps(l_out))


def test_it_is_sigma_applied_at_every_grid_point_and_projected():
    grid = _grid()
    y = torch.randn(5, grid.sample.shape[0], 7)
    expected = torch.matmul(grid.project.T, NormalizedSiLU()(torch.matmul(grid.sample.T, y)))
    torch.testing.assert_close(grid_activation(y, grid.sample, grid.project, "torch"), expected, rtol=0, atol=1e-13)


def test_sigmas_derivatives_are_those_autograd_takes():
    x = torch.linspace(-6, 6, 101, requires_grad=True)
    value = NormalizedSiLU()(x)
    for order in range(1, 5):
        (value,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        torch.testing.assert_close(silu_derivative(x, order), value, rtol=0, atol=1e-12)


def test_derivatives_of_every_order_force_training_needs():
    grid = _grid(2, 1, 3)
    y = torch.randn(2, grid.sample.shape[0], 3, requires_grad=True)
    function = lambda y: grid_activation(y, grid.sample, grid.project, "torch")  # noqa: E731
    assert torch.autograd.gradcheck(function, (y,))
    assert torch.autograd.gradgradcheck(function, (y,))
    # a third derivative, through the second-order primitive with two factors
    (g,) = torch.autograd.grad(function(y).square().sum(), y, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), y, create_graph=True)
    assert torch.autograd.gradcheck(lambda y: torch.autograd.grad(
        torch.autograd.grad(function(y).square().sum(), y, create_graph=True)[0].square().sum(), y,
        create_graph=True)[0], (y,))
    assert torch.isfinite(gg).all()


def test_an_unknown_backend_is_refused():
    grid = _grid()
    with pytest.raises(ValueError, match="backend must be one of"):
        grid_activation(torch.randn(1, grid.sample.shape[0], 2), grid.sample, grid.project, "cuda")


def test_the_grid_mlp_through_the_fused_op_equals_its_matmuls_with_their_derivatives():
    from mlip.nn.grid_mlp import SphericalGridMLP

    irreps_in, irreps_out = o3.Irreps("4x0e+4x1o+4x2e+4x3o"), o3.Irreps("4x0e+4x1o+4x2e")
    torch.manual_seed(0)
    plain = SphericalGridMLP(irreps_in, 8, 5, irreps_out=irreps_out)
    fused = SphericalGridMLP(irreps_in, 8, 5, irreps_out=irreps_out, backend="auto")  # the torch twin on the CPU
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(6, irreps_in.dim, requires_grad=True)
    outputs = [layer(x) for layer in (plain, fused)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-13)
    # second derivatives, as force training takes them: d/dW of (dE/dx)²
    grads = []
    for layer, out in zip((plain, fused), outputs):
        (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(dx.square().sum(), list(layer.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="grid MLP backend"):
        SphericalGridMLP(irreps_in, 8, backend="fused")
