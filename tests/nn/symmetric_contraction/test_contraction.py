import itertools
import math

import pytest
import torch
from e3nn import o3

from mlip.nn.irreps import channel_irreps, from_channels, to_channels
from mlip.nn.symmetric_contraction import SymmetricContraction, coupling_frame, product_basis


def _character(l: int, angle: torch.Tensor) -> torch.Tensor:
    return 1 + 2 * sum(torch.cos(m * angle) for m in range(1, l + 1)) if l else torch.ones_like(angle)


def _multiplicity_by_characters(irreps: str, nu: int, ir_out: str, symmetric: bool = True) -> int:
    """Multiplicity of ir_out in Sym^ν(irreps) (or the full tensor power, ``symmetric=False``)
    from O(3) characters (Haar integral over angle)."""
    irreps, ir_out = o3.Irreps(irreps), o3.Irrep(ir_out)
    theta = (torch.arange(20000, dtype=torch.float64) + 0.5) * math.pi / 20000
    density = (1 - torch.cos(theta)) / math.pi * (math.pi / 20000)

    def chi(s: int, k: int) -> torch.Tensor:  # character of V at g^k with g = (inversion^s, θ)
        return sum(((ir.p if s * k % 2 else 1)) * _character(ir.l, k * theta) for _, ir in irreps)

    total = 0.0
    for s in (0, 1):
        if nu == 1 or not symmetric:
            sym = chi(s, 1) ** nu
        elif nu == 2:
            sym = (chi(s, 1) ** 2 + chi(s, 2)) / 2
        else:
            sym = (chi(s, 1) ** 3 + 3 * chi(s, 2) * chi(s, 1) + 2 * chi(s, 3)) / 6
        out = (ir_out.p if s else 1) * _character(ir_out.l, theta)
        total += 0.5 * float((density * sym * out).sum())
    return round(total)


@pytest.mark.parametrize(
    "irreps,nu,ir_out",
    [("0e+1o", 2, "0e"), ("0e+1o", 3, "0e"), ("0e+1o+2e", 2, "1o"), ("0e+1o+2e", 3, "0e"),
     ("0e+1o+2e", 3, "1o"), ("0e+1o+2e+3o", 3, "0e"), ("0e+1o+2e+3o", 3, "2e"), ("0e+1o", 3, "1e")],
)
def test_basis_size_matches_character_theory(irreps, nu, ir_out):
    basis = product_basis(o3.Irreps(irreps), nu, o3.Irrep(ir_out))
    assert basis.shape[0] == _multiplicity_by_characters(irreps, nu, ir_out)


def test_basis_is_orthonormal_symmetric_and_equivariant():
    irreps, ir_out = o3.Irreps("0e+1o+2e"), o3.Irrep("1o")
    basis = product_basis(irreps, 3, ir_out)
    flat = basis.reshape(basis.shape[0], -1)
    assert torch.allclose(flat @ flat.T, torch.eye(basis.shape[0]), atol=1e-12)
    for perm in itertools.permutations([2, 3, 4]):
        assert torch.allclose(basis.permute(0, 1, *perm), basis, atol=1e-12)
    R = o3.rand_matrix()
    D_in, D_out = irreps.D_from_matrix(R), ir_out.D_from_matrix(R)
    rotated = torch.einsum("pmabc,ai,bj,ck->pmijk", basis, D_in, D_in, D_in)
    assert torch.allclose(torch.einsum("nm,pmijk->pnijk", D_out, basis), rotated, atol=1e-12)


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_compressed_contraction_equals_full_basis_sum(nu):
    torch.manual_seed(nu)
    irreps_in, irreps_out = o3.Irreps("2x0e+2x1o"), o3.Irreps("2x0e+2x1o")
    block = SymmetricContraction(irreps_in, irreps_out, nu, num_elements=2)
    x, species = torch.randn(5, irreps_in.dim), torch.tensor([0, 1, 1, 0, 1])
    xc = to_channels(x, irreps_in)
    _, per_channel_in = channel_irreps(irreps_in)
    outs = []
    for i_out, (_, ir_out) in enumerate(channel_irreps(irreps_out)[1]):
        out = torch.zeros(5, 2, ir_out.dim)
        for order in range(1, nu + 1):
            basis = product_basis(per_channel_in, order, ir_out)
            if basis.shape[0] == 0:
                continue
            w = block.weights[f"{i_out}_{order}"][species]  # [n, k, p]
            full = torch.einsum("pm...,nkp->nkm...", basis, w)
            for _ in range(order):
                full = (full * xc.reshape(5, 2, 1, *([1] * (full.dim() - 4)), -1)).sum(-1)
            out = out + full
        outs.append(out)
    expected = from_channels(torch.cat(outs, dim=-1), irreps_out)
    assert torch.allclose(block(x, species), expected, atol=1e-12)


def test_component_normalisation_scales_each_output_irrep_by_sqrt_of_its_dimension():
    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("3x0e+3x1o+3x2e"), o3.Irreps("3x0e+3x1o+3x2e")
    norm = SymmetricContraction(irreps_in, irreps_out, 2, num_elements=2).double()
    component = SymmetricContraction(irreps_in, irreps_out, 2, num_elements=2, normalization="component").double()
    component.load_state_dict(norm.state_dict())
    x = torch.randn(7, irreps_in.dim, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    factors = torch.cat([torch.full((mul * ir.dim,), math.sqrt(ir.dim), dtype=torch.float64) for mul, ir in irreps_out])
    torch.testing.assert_close(component(x, species), norm(x, species) * factors, rtol=1e-12, atol=1e-12)
    # and stays equivariant
    rotation = o3.rand_matrix(dtype=torch.float64)
    d_in, d_out = irreps_in.D_from_matrix(rotation), irreps_out.D_from_matrix(rotation)
    torch.testing.assert_close(component(x @ d_in.T, species), component(x, species) @ d_out.T, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="normalization"):
        SymmetricContraction(irreps_in, irreps_out, 2, num_elements=2, normalization="unit")


@pytest.mark.parametrize("irreps,nu,ir_out,mace_count", [
    ("0e+1o+2e+3o", 2, "0e", 4), ("0e+1o+2e+3o", 3, "0e", 23), ("0e+1o+2e+3o", 2, "1o", 6),
    ("0e+1o+2e+3o", 3, "1o", 51), ("0e+1o+2e", 3, "2e", None),
])
def test_coupling_frame_is_tight_over_every_coupling_chain(irreps, nu, ir_out, mace_count):
    frame = coupling_frame(o3.Irreps(irreps), nu, o3.Irrep(ir_out))
    # one row per coupling chain: the multiplicity of ir_out in the full tensor power ...
    assert frame.shape[0] == _multiplicity_by_characters(irreps, nu, ir_out, symmetric=False)
    if mace_count is not None:  # ... which is the width of mace-torch 0.3.16's U_matrix_real for the same irreps
        assert frame.shape[0] == mace_count
    assert frame.shape[1] == product_basis(o3.Irreps(irreps), nu, o3.Irrep(ir_out)).shape[0]
    torch.testing.assert_close(frame.T @ frame, torch.eye(frame.shape[1], dtype=torch.float64), rtol=0, atol=1e-10)


def test_coupling_parametrization_is_the_same_function_through_the_frame():
    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("3x0e+3x1o+3x2e"), o3.Irreps("3x0e+3x1o")
    coupling = SymmetricContraction(irreps_in, irreps_out, 3, num_elements=2, normalization="component",
                                    parametrization="coupling").double()
    plain = SymmetricContraction(irreps_in, irreps_out, 3, num_elements=2, normalization="component").double()
    with torch.no_grad():
        for name, weight in coupling.weights.items():
            frame = getattr(coupling, f"frame_{name}")
            assert weight.shape[-1] == frame.shape[0] >= frame.shape[1] == plain.weights[name].shape[-1]
            plain.weights[name].copy_(weight @ frame)
    x = torch.randn(6, irreps_in.dim, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(coupling(x, species), plain(x, species), rtol=1e-12, atol=1e-12)
    rotation = o3.rand_matrix(dtype=torch.float64)
    d_in, d_out = irreps_in.D_from_matrix(rotation), irreps_out.D_from_matrix(rotation)
    torch.testing.assert_close(coupling(x @ d_in.T, species), coupling(x, species) @ d_out.T, rtol=1e-10, atol=1e-10)
    # initialised as mace-torch's: N(0, 1/k²) over the k couplings
    big = SymmetricContraction(o3.Irreps("64x0e+64x1o+64x2e+64x3o"), o3.Irreps("64x0e"), 3, num_elements=4,
                               parametrization="coupling")
    weight = big.weights["0_3"]
    assert weight.shape[-1] == 23
    assert abs(float(weight.detach().std()) * 23 - 1) < 0.05
    with pytest.raises(ValueError, match="parametrization"):
        SymmetricContraction(irreps_in, irreps_out, 2, num_elements=2, parametrization="mace")
