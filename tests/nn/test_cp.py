"""CP-decomposed tensor products (TDN): exactness at full rank, fit error, equivariance bound."""

import pytest
import torch
from e3nn import o3

from mlip.nn.irreps import to_channels
from mlip.nn.tensor_product import ChannelwiseConvolution
from mlip.nn.tensor_product.cp import CPConvolution, equivariance_bound

IRREPS = (o3.Irreps("4x0e+4x1o+4x2e"), o3.Irreps.spherical_harmonics(3), o3.Irreps("4x0e+4x1o+4x2e+4x3o"))


def _inputs(conv, n=5, e=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, conv.irreps_in.dim, generator=g)
    y = torch.randn(e, conv.irreps_sh.dim, generator=g)
    sender, receiver = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    return x, y, sender, receiver


def test_full_rank_reproduces_the_tensor_product():
    reference = ChannelwiseConvolution(*IRREPS, backend="e3nn")
    cp = CPConvolution(*IRREPS, rank="full")
    assert cp.irreps_out == reference.irreps_out and cp.weight_numel == reference.weight_numel
    assert max(cp.fit_errors) < 1e-14
    x, y, sender, receiver = _inputs(cp)
    w = torch.randn(y.shape[0], cp.weight_numel, requires_grad=True)
    a, b = reference(x, y, w, sender, receiver, 5), cp(x, y, w, sender, receiver, 5)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    ga, gb = (torch.autograd.grad(out.square().sum(), w) for out in (a, b))
    torch.testing.assert_close(gb, ga, rtol=1e-11, atol=1e-11)


def test_path_weight_sharing_is_the_product_with_one_weight_for_every_path():
    reference = ChannelwiseConvolution(*IRREPS, backend="e3nn")
    shared = CPConvolution(*IRREPS, rank="full", share_paths=True)
    assert shared.weight_numel == 4 and len(shared.factors) == 1
    x, y, sender, receiver = _inputs(shared)
    w = torch.randn(y.shape[0], 4)
    expected = reference(x, y, w.repeat(1, shared.num_paths), sender, receiver, 5)
    torch.testing.assert_close(shared(x, y, w, sender, receiver, 5), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("share_paths", [False, True])
def test_fit_error_falls_with_rank(share_paths):
    errors = [max(CPConvolution(*IRREPS, rank=r, share_paths=share_paths).fit_errors) for r in (1, 3, 8, 24, "full")]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-14


def _rotated_error(conv, rotation, seed=1):
    """Per-channel ‖f(Dx, Dy) − D f(x, y)‖, the bound 2 Σ_p |w_p| ‖ΔM^p‖ ‖x‖ ‖y‖, for one edge 0 -> 1."""
    x, y, _, _ = _inputs(conv, n=2, e=1, seed=seed)
    w = torch.randn(1, conv.weight_numel, generator=torch.Generator().manual_seed(seed))
    edge = (torch.tensor([0]), torch.tensor([1]))
    d_in, d_sh, d_out = (irreps.D_from_matrix(rotation) for irreps in (conv.irreps_in, conv.irreps_sh, conv.irreps_out))
    rotated = conv(x @ d_in.T, y @ d_sh.T, w, *edge, 2)[1]
    expected = conv(x, y, w, *edge, 2)[1] @ d_out.T
    channels = conv.num_channels
    error = torch.linalg.vector_norm(to_channels((rotated - expected)[None], conv.irreps_out)[0], dim=-1)  # [C]
    x_norm = torch.linalg.vector_norm(to_channels(x[:1], conv.irreps_in)[0], dim=-1)
    path_weights = w.view(-1, channels).T  # [C, P] (or [C, 1] shared)
    bound = equivariance_bound(conv.residual_norms(), path_weights) * x_norm * torch.linalg.vector_norm(y[0])
    return error, bound


@pytest.mark.parametrize("share_paths", [False, True])
def test_equivariance_error_is_within_the_bound_of_the_decomposition(share_paths):
    for rank, exact in ((4, False), ("full", True)):
        conv = CPConvolution(*IRREPS, rank=rank, share_paths=share_paths)
        for seed in range(3):
            torch.manual_seed(seed)
            rotation = o3.rand_matrix()
            error, bound = _rotated_error(conv, rotation, seed)
            assert (error <= bound + 1e-12).all(), (error, bound)
            if exact:
                assert error.max() < 1e-12
            else:
                assert error.max() > 1e-6  # a low rank is really approximate, and the bound is not vacuous


def test_learned_factors_train_and_report_their_own_fit():
    conv = CPConvolution(*IRREPS, rank=8, share_paths=True, learn_factors=True)
    assert {"A", "B", "C"} <= {name for name, _ in conv.named_parameters()}
    before = conv.fit_errors[0]
    x, y, sender, receiver = _inputs(conv)
    w = torch.randn(y.shape[0], conv.weight_numel)
    conv(x, y, w, sender, receiver, 5).square().sum().backward()
    assert conv.A.grad is not None and conv.B.grad.abs().sum() > 0
    with torch.no_grad():
        conv.A.mul_(1.5)  # a step away from the fit: the reported error follows the factors
    assert conv.fit_errors[0] > before
