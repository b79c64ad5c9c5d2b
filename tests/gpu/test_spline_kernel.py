"""The Triton spline kernels against their pure-torch twins, on the device machine."""

import pytest
import torch

from mlip.nn.kernels import spline as kernels
from mlip.nn.kernels.spline import knot_spacing, spline_contract

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton"),
]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _relative(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_basis, channels", [(8, 16), (20, 96), (40, 7)])
def test_primitives_match_the_twin_for_every_derivative_order(dtype, num_basis, channels):
    """Each kernel in ``dtype`` against the twin in float64 (the reference), for E_d, P_d and S_d."""
    torch.manual_seed(0)
    r = torch.rand(5003, dtype=torch.float64, device="cuda") * 6.0
    w = torch.randn(num_basis, channels, dtype=torch.float64, device="cuda")
    g = torch.randn(5003, channels, dtype=torch.float64, device="cuda")
    low = [x.to(dtype) for x in (r, w, g)]
    h = knot_spacing(num_basis, 6.0)
    for order in range(4):
        pairs = [
            (kernels.evaluate_triton(low[0], low[1], h, order), kernels.evaluate_torch(r, w, h, order)),
            (kernels.project_triton(*low, h, order), kernels.project_torch(r, w, g, h, order)),
            (kernels.scatter_triton(low[0], low[2], h, order, num_basis), kernels.scatter_torch(r, g, h, order, num_basis)),
        ]
        for name, (ours, reference) in zip(("evaluate", "project", "scatter"), pairs):
            assert ours.dtype == dtype
            assert _relative(ours, reference) < TOLERANCE[dtype], (name, order)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_force_training_derivatives_match_the_twin(dtype):
    """Forward, forces (first derivative) and weight gradients of a loss on forces (second)."""
    torch.manual_seed(1)
    r0 = torch.rand(20000, dtype=dtype, device="cuda") * 5.0
    w0 = torch.randn(16, 64, dtype=dtype, device="cuda")
    results = {}
    for backend in ("torch", "triton"):
        r, w = r0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        radial = spline_contract(r, w, 5.0, backend)
        energy = (radial * torch.sin(radial)).sum()
        (forces,) = torch.autograd.grad(energy, r, create_graph=True)
        loss = energy + (forces**2).sum()
        grad_r, grad_w = torch.autograd.grad(loss, (r, w))
        results[backend] = (radial, forces, grad_r, grad_w)
    for ours, twin in zip(results["triton"], results["torch"]):
        assert _relative(ours, twin) < 10 * TOLERANCE[dtype]


def test_gradcheck_and_gradgradcheck_on_cuda():
    torch.manual_seed(2)
    r = (torch.rand(40, dtype=torch.float64, device="cuda") * 5.0).requires_grad_(True)
    w = torch.randn(10, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    fn = lambda x, y: spline_contract(x, y, 5.0, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (r, w))
    assert torch.autograd.gradgradcheck(fn, (r, w))
