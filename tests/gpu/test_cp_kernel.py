"""The CP edge-step Triton kernels against their torch twins, and a TDN on CUDA, on the device machine."""

import pytest
import torch

from mlip.nn.kernels import cp_message as kernels
from tests.nn.test_cp_message import problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or kernels.triton is None, reason="needs CUDA and Triton"),
]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "num_paths, ranks, channels, edges", [(1, (64,), 128, 5003), (3, (7, 1, 20), 33, 5003), (3, (2, 3, 1), 4, 100)]
)
def test_primitives_match_the_twin(dtype, num_paths, ranks, channels, edges):
    # 100 edges among 300 nodes: most nodes receive nothing and must come out zero
    u, v, w, path, s, r, n = problem(num_paths, ranks=ranks, channels=channels, edges=edges, nodes=300)
    u, v, w, path, s, r = (t.detach().to("cuda") for t in (u, v, w, path, s, r))
    a = torch.randn_like(u)
    low = [t.to(dtype) for t in (u, v, w, a)]
    ul, vl, wl, al = low
    pairs = [
        (kernels.to_nodes_torch(u, v, w, path, s, r, n), kernels.to_nodes_triton(ul, vl, wl, path, s, r, n)),
        (kernels.to_edges_v_torch(a, u, w, path, r, s), kernels.to_edges_v_triton(al, ul, wl, path, r, s)),
        (kernels.to_edges_w_torch(a, u, v, path, r, s, num_paths),
         kernels.to_edges_w_triton(al, ul, vl, path, r, s, num_paths)),
    ]
    for reference, fused in pairs:
        assert fused.dtype == dtype
        error = (fused.double() - reference).abs().max() / reference.abs().max()
        assert error < TOLERANCE[dtype], float(error)


def test_second_derivatives_on_cuda():
    u, v, w, path, s, r, n = problem(edges=30, nodes=8)
    args = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (u, v, w)]
    path, s, r = path.cuda(), s.cuda(), r.cuda()

    def f(u, v, w):
        return kernels.cp_messages(u, v, w, path, s, r, n, "triton")

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_tdn_on_cuda_equals_the_cpu_and_does_not_synchronise(rng):
    from tests.conftest import random_alloy
    from tests.models.test_tdn import _tdn
    from mlip.data.graph import structure_to_graph
    from mlip.data.readers.atoms import structure_from_atoms

    cpu = _tdn(cp_rank=8, cp_share_paths=False)
    gpu = _tdn(cp_rank=8, cp_share_paths=False).cuda()
    graph = structure_to_graph(structure_from_atoms(random_alloy(rng), "t"), 4.0)
    a, b = cpu(graph, compute_stress=True), gpu(graph.to("cuda"), compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(b[key].cpu(), a[key], rtol=1e-10, atol=1e-10)
    g = graph.to("cuda")
    species = gpu.species(g.atomic_numbers)
    args = (species, g.positions, g.cell.view(-1, 3, 3), torch.zeros_like(species), g.edge_index, g.shifts, 1)
    gpu.predict(*args, compute_stress=True, create_graph=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gpu.predict(*args, compute_stress=True, create_graph=True)
        torch.autograd.grad(out["forces"].square().sum(), list(gpu.parameters()), allow_unused=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
