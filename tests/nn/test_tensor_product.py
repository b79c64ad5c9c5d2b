"""Tensor-product backends agree on the same weights (cuequivariance's torch fallback on the CPU)."""

import pytest
import torch
from e3nn import o3

from mlip.nn.tensor_product import ChannelwiseConvolution
from tests.conftest import make_tiny_potential

import importlib.util

cuet = pytest.importorskip("cuequivariance_torch")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cuequivariance_ops_torch") is not None,
    reason="cuequivariance's CPU fallback does not run once its CUDA ops are installed (tests/gpu covers CUDA)",
)


@pytest.mark.parametrize("irreps_in, sh, target", [
    ("4x0e+4x1o", "0e+1o+2e", "4x0e+4x1o+4x2e"),
    ("3x0e+3x1o+3x2e", "0e+1o+2e+3o", "3x0e+3x1o+3x2e+3x3o"),
])
def test_cueq_convolution_equals_e3nn_on_the_same_weights(irreps_in, sh, target):
    torch.manual_seed(0)
    e3nn_conv = ChannelwiseConvolution(o3.Irreps(irreps_in), o3.Irreps(sh), o3.Irreps(target), backend="e3nn")
    cueq_conv = ChannelwiseConvolution(o3.Irreps(irreps_in), o3.Irreps(sh), o3.Irreps(target), backend="cueq")
    n, e = 6, 20
    x = torch.randn(n, e3nn_conv.irreps_in.dim, requires_grad=True)
    y = torch.randn(e, e3nn_conv.irreps_sh.dim)
    w = torch.randn(e, e3nn_conv.weight_numel, requires_grad=True)
    sender, receiver = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    a = e3nn_conv(x, y, w, sender, receiver, n)
    b = cueq_conv.forward_cueq(x, y, w.index_select(1, cueq_conv._cueq_columns), sender, receiver, n)
    assert torch.allclose(a, b, atol=1e-12)
    ga = torch.autograd.grad(a.square().sum(), (x, w))
    gb = torch.autograd.grad(b.square().sum(), (x, w))
    assert all(torch.allclose(u, v, atol=1e-11) for u, v in zip(ga, gb))
    assert torch.equal(cueq_conv(x, y, w, sender, receiver, n), a)  # CPU tensors take the e3nn path
    assert set(e3nn_conv.state_dict()) == set(cueq_conv.state_dict())


def test_models_of_either_backend_share_weights(rng):
    from ase.build import bulk

    from mlip.data.graph import structure_to_graph
    from mlip.data.readers.atoms import structure_from_atoms

    e3nn_model = make_tiny_potential(tp_backend="e3nn")
    cueq_model = make_tiny_potential(tp_backend="cueq")
    cueq_model.load_state_dict(e3nn_model.state_dict())
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.numbers[::3] = 79
    atoms.positions += 0.1 * rng.standard_normal(atoms.positions.shape)
    graph = structure_to_graph(structure_from_atoms(atoms, "t"), e3nn_model.r_max)
    out_a = e3nn_model(graph, compute_stress=True)
    out_b = cueq_model(graph, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(out_a[key], out_b[key], atol=1e-10), key
