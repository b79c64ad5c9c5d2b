"""The grid backend: the Gaunt product on the sphere, equivariant to round-off on its exact grid."""

import pytest
import torch
from e3nn import o3

from mlip.nn.tensor_product.grid import GridConvolution, gaunt_output_irreps


def _inputs(conv, n=6, edges=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, conv.irreps_in.dim, generator=g)
    vectors = torch.randn(edges, 3, generator=g)
    sender, receiver = torch.randint(0, n, (edges,), generator=g), torch.randint(0, n, (edges,), generator=g)
    weights = torch.randn(edges, conv.weight_numel, generator=g)
    return x, vectors, weights, sender, receiver, n


def _sh(conv, vectors):
    return o3.spherical_harmonics(conv.irreps_sh, vectors, normalize=True, normalization="component")


def test_rotations_commute_with_the_grid_convolution():
    conv = GridConvolution(o3.Irreps("8x0e+8x1o+8x2e"), o3.Irreps.spherical_harmonics(3), o3.Irreps("8x0e+8x1o+8x2e+8x3o"))
    x, vectors, w, s, r, n = _inputs(conv)
    out = conv(x, _sh(conv, vectors), w, s, r, n)
    for rotation in (o3.rand_matrix(), -o3.rand_matrix()):  # parity too: natural-parity irreps
        turned = conv(x @ conv.irreps_in.D_from_matrix(rotation).T, _sh(conv, vectors @ rotation.T), w, s, r, n)
        torch.testing.assert_close(turned, out @ conv.irreps_out.D_from_matrix(rotation).T, rtol=0, atol=1e-12)


def test_the_smallest_exact_grid_equals_a_much_finer_one():
    args = (o3.Irreps("4x0e+4x1o"), o3.Irreps.spherical_harmonics(2), o3.Irreps("4x0e+4x1o+4x2e"))
    exact, fine = GridConvolution(*args), GridConvolution(*args, resolution=16)
    assert exact.grid.exact_degree >= 1 + 2 + 2 and exact.grid.num_points < fine.grid.num_points
    x, vectors, w, s, r, n = _inputs(exact)
    torch.testing.assert_close(exact(x, _sh(exact, vectors), w, s, r, n), fine(x, _sh(fine, vectors), w, s, r, n),
                               rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("l1, l2, l3", [(1, 1, 0), (1, 2, 1), (2, 2, 2), (1, 3, 2)])
def test_each_path_is_the_clebsch_gordan_path_times_one_constant(l1, l2, l3):
    # Gaunt coefficients are CG coefficients times a factor of (l1, l2, l3): the grid path
    # equals e3nn's single 'uvu' path up to one number for all inputs
    ir = lambda l: o3.Irrep(l, (-1) ** l)  # noqa: E731
    conv = GridConvolution(o3.Irreps([(1, ir(l1))]), o3.Irreps([(1, ir(l2))]), o3.Irreps([(1, ir(l3))]))
    e3nn = o3.TensorProduct(f"1x{ir(l1)}", f"1x{ir(l2)}", f"1x{ir(l3)}", [(0, 0, 0, "uvu", False)])
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 2 * l1 + 1, generator=g), torch.randn(40, 2 * l2 + 1, generator=g)
    index = torch.arange(40)
    ours = conv(x, y, torch.ones(40, 1), index, index, 40)
    theirs = e3nn(x, y)
    ratio = (ours * theirs).sum() / (theirs * theirs).sum()
    torch.testing.assert_close(ours, ratio * theirs, rtol=0, atol=1e-12)
    assert abs(float(ratio)) > 1e-3


def test_odd_paths_and_pseudo_tensors_are_what_the_grid_cannot_represent():
    # 1o x 1o reaches 0e and 2e; 1e (the cross product) would need l1 + l2 + l3 odd
    assert gaunt_output_irreps(o3.Irreps("1o"), o3.Irreps("1o"), o3.Irreps("0e+1o+1e+2e")) == o3.Irreps("0e+2e")
    with pytest.raises(ValueError, match="1e are not functions on the sphere"):
        GridConvolution(o3.Irreps("4x1e"), o3.Irreps("0e+1o"), o3.Irreps("4x1e"))


def test_outputs_have_unit_scale_at_initialisation():
    conv = GridConvolution(o3.Irreps("16x0e+16x1o"), o3.Irreps.spherical_harmonics(3), o3.Irreps("16x0e+16x1o"))
    x, vectors, w, _, _, n = _inputs(conv, n=400, edges=400)
    index = torch.arange(400)
    out = conv(x, _sh(conv, vectors), w, index, index, n)
    assert 0.5 < float(out.pow(2).mean()) < 2.0
