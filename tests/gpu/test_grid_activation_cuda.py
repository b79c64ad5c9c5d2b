"""The fused activation on the sphere (Triton) against its pure-torch twin, on the device machine."""

import pytest
import torch
from e3nn import o3

from mlip.nn.kernels import grid_activation as kernels
from mlip.nn.spherical import SphericalGrid

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton"),
]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _grid(l_in, l_out, resolution, dtype):
    irreps = lambda lmax: o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])  # noqa: E731
    grid = SphericalGrid(irreps(l_in), resolution, irreps_out=irreps(l_out)).to("cuda", torch.float64)
    return grid.sample.T.contiguous(), grid.project.contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("l_in, l_out, resolution, channels", [(3, 2, 6, 256), (2, 1, 4, 40), (4, 3, 7, 16)])
def test_every_primitive_matches_the_twin(dtype, l_in, l_out, resolution, channels):
    """Φ_k with 0-3 factors in both spaces, the kernel in ``dtype`` against the twin in float64."""
    torch.manual_seed(0)
    m_in, m_out = _grid(l_in, l_out, resolution, dtype)
    d_in, d_out = m_in.shape[1], m_out.shape[1]
    y = torch.randn(301, d_in, channels, dtype=torch.float64, device="cuda")
    u_in, u_out, w_out = (torch.randn(301, d, channels, dtype=torch.float64, device="cuda")
                          for d in (d_in, d_out, d_out))
    cases = [((), (), m_out, 0), ((u_out,), (m_out,), m_in, 1), ((u_out, u_in), (m_out, m_in), m_in, 2),
             ((u_out, u_in, w_out), (m_out, m_in, m_out), m_out, 3), ((u_in,), (m_in,), m_out, 4)]
    for factors, matrices, out_matrix, order in cases:
        reference = kernels.phi_torch(y, factors, matrices, m_in, out_matrix, order)
        low = [t.to(dtype) for t in (y, *factors)]
        ours = kernels.phi_triton(low[0], tuple(low[1:]), tuple(m.to(dtype) for m in matrices), m_in.to(dtype),
                                  out_matrix.to(dtype), order)
        assert ours.dtype == dtype
        error = float((ours.double() - reference).abs().max() / reference.abs().max())
        assert error < TOLERANCE[dtype], (order, len(factors), error)


def test_the_fused_grid_mlp_trains_forces_as_the_matmuls_do_and_replays_in_a_cuda_graph():
    from mlip.nn.grid_mlp import SphericalGridMLP

    irreps_in, irreps_out = o3.Irreps("32x0e+32x1o+32x2e+32x3o"), o3.Irreps("32x0e+32x1o+32x2e")
    torch.manual_seed(0)
    plain = SphericalGridMLP(irreps_in, 64, 6, irreps_out=irreps_out).to("cuda", torch.float64)
    fused = SphericalGridMLP(irreps_in, 64, 6, irreps_out=irreps_out, backend="triton").to("cuda", torch.float64)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(500, irreps_in.dim, dtype=torch.float64, device="cuda", requires_grad=True)
    grads = []
    for layer in (plain, fused):
        (dx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(dx.square().sum(), list(layer.parameters())))
    for a, b in zip(*grads):
        assert float((a - b).abs().max() / a.abs().max()) < 1e-11
    static = torch.randn(500, irreps_in.dim, dtype=torch.float64, device="cuda")
    fused(static)  # warm-up: compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused(static)
    static.copy_(x.detach())
    graph.replay()
    torch.testing.assert_close(out, plain(x.detach()), rtol=0, atol=1e-12)
