"""cuequivariance's CUDA tensor product against e3nn on the same weights, on the device machine."""

import pytest
import torch
from e3nn import o3

from mlip.nn.tensor_product import ChannelwiseConvolution
from tests.conftest import make_tiny_potential

cuet = pytest.importorskip("cuequivariance_torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cueq_convolution_on_cuda_equals_e3nn(dtype):
    torch.manual_seed(0)
    args = (o3.Irreps("32x0e+32x1o"), o3.Irreps("0e+1o+2e+3o"), o3.Irreps("32x0e+32x1o+32x2e+32x3o"))
    e3nn_conv = ChannelwiseConvolution(*args, backend="e3nn").to("cuda", dtype)
    cueq_conv = ChannelwiseConvolution(*args, backend="cueq").to("cuda", dtype)
    n, e = 300, 6000
    x = torch.randn(n, e3nn_conv.irreps_in.dim, device="cuda", dtype=dtype, requires_grad=True)
    y = torch.randn(e, e3nn_conv.irreps_sh.dim, device="cuda", dtype=dtype)
    w = torch.randn(e, e3nn_conv.weight_numel, device="cuda", dtype=dtype, requires_grad=True)
    sender, receiver = torch.randint(0, n, (e,), device="cuda"), torch.randint(0, n, (e,), device="cuda")
    a, b = e3nn_conv(x, y, w, sender, receiver, n), cueq_conv(x, y, w, sender, receiver, n)
    scale = a.abs().max()
    assert (a - b).abs().max() / scale < TOLERANCE[dtype]
    ga = torch.autograd.grad(a.square().sum(), (x, w))
    gb = torch.autograd.grad(b.square().sum(), (x, w))
    for u, v in zip(ga, gb):
        assert (u - v).abs().max() / u.abs().max() < TOLERANCE[dtype]


def test_model_energy_forces_stress_equal_across_backends_on_cuda(rng):
    from ase.build import bulk

    from mlip.data.graph import structure_to_graph
    from mlip.data.readers.atoms import structure_from_atoms

    e3nn_model = make_tiny_potential(tp_backend="e3nn").cuda()
    cueq_model = make_tiny_potential(tp_backend="cueq").cuda()
    cueq_model.load_state_dict(e3nn_model.state_dict())
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.numbers[::3] = 79
    atoms.positions += 0.1 * rng.standard_normal(atoms.positions.shape)
    graph = structure_to_graph(structure_from_atoms(atoms, "t"), e3nn_model.r_max).to("cuda")
    out_a, out_b = e3nn_model(graph, compute_stress=True), cueq_model(graph, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(out_a[key], out_b[key], atol=1e-10), key


@pytest.mark.parametrize("parametrization", ["orthonormal", "coupling"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cueq_symmetric_contraction_on_cuda_equals_ours(dtype, parametrization):
    from mlip.nn.symmetric_contraction import SymmetricContraction

    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("32x0e+32x1o+32x2e+32x3o"), o3.Irreps("32x0e+32x1o")
    contraction = SymmetricContraction(irreps_in, irreps_out, 3, 4, backend="cueq", normalization="component",
                                       parametrization=parametrization).to("cuda", dtype)
    x = torch.randn(500, irreps_in.dim, device="cuda", dtype=dtype, requires_grad=True)
    species = torch.randint(0, 4, (500,), device="cuda")
    reference = contraction.to("cpu", torch.float64)(x.detach().cpu().double(), species.cpu())
    contraction.to("cuda", dtype)
    ours = contraction(x, species)  # the cuequivariance path on CUDA
    assert (ours.double().cpu() - reference).abs().max() / reference.abs().max() < TOLERANCE[dtype]
