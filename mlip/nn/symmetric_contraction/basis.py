"""What the symmetric contraction computes: the basis of MACE's product (Eq. 10).

For every node i and channel k, the ν-fold product of the atomic basis
``A_{i,k,lm}`` is coupled to an output irrep ``L`` by generalised Clebsch-Gordan
coefficients. Because the ν factors are the same vector, only the part of the
coupling tensor symmetric under permutation of the factors matters; we build an
orthonormal basis ``U^{(ν,L)}_{η, M, a_1..a_ν}`` of that symmetric, equivariant
space once, and learn element-dependent weights ``w_{z_i, k, η}`` on it:

    B_{i,kLM} = Σ_ν Σ_η w^{(ν)}_{z_i k L η} Σ_{a} U^{(ν,L)}_{η M a_1..a_ν} Π_ξ A_{i,k,a_ξ}
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from e3nn import o3


def _block_embedding(irreps: o3.Irreps, block: int) -> torch.Tensor:
    """[2l+1, irreps.dim] matrix that picks irrep number ``block`` out of a vector."""
    start = irreps[:block].dim
    dim = irreps[block].ir.dim
    embed = torch.zeros(dim, irreps.dim, dtype=torch.float64)
    embed[:, start : start + dim] = torch.eye(dim, dtype=torch.float64)
    return embed


def _coupling_paths(irreps: o3.Irreps, ir_out: o3.Irrep, blocks: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Every chain of Clebsch-Gordan couplings ``((a_1 ⊗ a_2) ⊗ a_3) ... -> ir_out`` over the given
    tuples of irrep blocks, each a tensor [2L+1, d, ..., d]."""
    ls = [ir.l for _, ir in irreps]
    paths = []
    for combo in blocks:
        if math.prod(irreps[b].ir.p for b in combo) != ir_out.p:
            continue
        partial = [(ls[combo[0]], _block_embedding(irreps, combo[0]))]
        for step, b in enumerate(combo[1:], start=1):
            reach = sum(ls[c] for c in combo[step + 1 :])  # what the remaining factors can still add
            coupled = []
            for l_partial, tensor in partial:
                for l_new in range(abs(l_partial - ls[b]), l_partial + ls[b] + 1):
                    if abs(l_new - ir_out.l) > reach:
                        continue
                    cg = o3.wigner_3j(l_partial, ls[b], l_new, dtype=torch.float64)
                    new = torch.einsum("ijk,i...,jy->k...y", cg, tensor, _block_embedding(irreps, b))
                    coupled.append((l_new, new))
            partial = coupled
        paths += [tensor for l_final, tensor in partial if l_final == ir_out.l]
    return paths


@functools.lru_cache(maxsize=None)
def _product_basis_cached(irreps_str: str, correlation: int, ir_out_str: str) -> torch.Tensor:
    irreps = o3.Irreps(irreps_str)
    ir_out = o3.Irrep(ir_out_str)
    # Sorted block tuples suffice: symmetrising the couplings of one ordering spans
    # the same space as symmetrising those of any permutation of it.
    blocks = list(itertools.combinations_with_replacement(range(len(irreps)), correlation))
    paths = _coupling_paths(irreps, ir_out, blocks)
    shape = (ir_out.dim,) + (irreps.dim,) * correlation
    if not paths:
        return torch.zeros((0,) + shape, dtype=torch.float64)
    stacked = torch.stack(paths)
    axes = list(range(2, 2 + correlation))
    symmetric = sum(
        stacked.permute(0, 1, *perm) for perm in itertools.permutations(axes)
    ) / math.factorial(correlation)
    _, singular, vh = torch.linalg.svd(symmetric.reshape(len(paths), -1), full_matrices=False)
    rank = int((singular > 1e-9 * singular[0]).sum()) if singular[0] > 1e-12 else 0
    return vh[:rank].reshape((rank,) + shape).contiguous()


def product_basis(irreps: o3.Irreps, correlation: int, ir_out: o3.Irrep) -> torch.Tensor:
    """Orthonormal basis of symmetric equivariant maps ``Sym^ν(irreps) -> ir_out`` (float64).

    Args:
        irreps: the irreps of one channel, each with multiplicity 1, e.g. ``0e+1o+2e``.
        correlation: ν, the number of factors.
        ir_out: the output irrep L.

    Returns:
        [n_basis, 2L+1, d, ..., d] with ν trailing axes of size d = irreps.dim.
    """
    return _product_basis_cached(str(o3.Irreps(irreps)), int(correlation), str(o3.Irrep(ir_out))).clone()


@functools.lru_cache(maxsize=None)
def _coupling_frame_cached(irreps_str: str, correlation: int, ir_out_str: str) -> torch.Tensor:
    irreps = o3.Irreps(irreps_str)
    ir_out = o3.Irrep(ir_out_str)
    blocks = list(itertools.product(range(len(irreps)), repeat=correlation))  # every ordering
    paths = _coupling_paths(irreps, ir_out, blocks)
    basis = _product_basis_cached(irreps_str, correlation, ir_out_str)
    if not paths or basis.shape[0] == 0:
        return torch.zeros((len(paths), basis.shape[0]), dtype=torch.float64)
    flat = torch.stack(paths).reshape(len(paths), -1)
    flat = flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    frame = flat @ basis.reshape(basis.shape[0], -1).T  # [k, p]: coordinates of our basis on the couplings
    gram = frame.T @ frame
    # the couplings are an orthonormal basis of all equivariant maps, which contain the symmetric ones
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=gram.dtype), atol=1e-9), "coupling frame not tight"
    return frame


def coupling_frame(irreps: o3.Irreps, correlation: int, ir_out: o3.Irrep) -> torch.Tensor:
    """[k, p] (float64): the symmetric part of each of the k Clebsch-Gordan coupling chains
    ``irreps^⊗ν -> ir_out`` (all orderings of the factors, unit norm) on the p functions of
    `product_basis`. A tight frame (``F^T F = 1``): weights ``v`` on the couplings act as
    ``v F`` on our basis. mace-torch's contraction learns its weights on such couplings.
    """
    return _coupling_frame_cached(str(o3.Irreps(irreps)), int(correlation), str(o3.Irrep(ir_out))).clone()


def _sorted_multi_indices(dim: int, correlation: int) -> torch.Tensor:
    """All a_1 <= ... <= a_ν in range(dim): [n_monomials, ν]."""
    return torch.tensor(list(itertools.combinations_with_replacement(range(dim), correlation)), dtype=torch.long)


def monomial_recursion(dim: int, correlation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sorted multi-index of degree ν: the position of its first ν-1 entries among
    the sorted multi-indices of degree ν-1, and its last entry."""
    previous = {tuple(row): k for k, row in enumerate(_sorted_multi_indices(dim, correlation - 1).tolist())}
    rows = _sorted_multi_indices(dim, correlation).tolist()
    parent = torch.tensor([previous[tuple(row[:-1])] for row in rows], dtype=torch.long)
    last = torch.tensor([row[-1] for row in rows], dtype=torch.long)
    return parent, last


def compress_symmetric(basis: torch.Tensor, correlation: int) -> torch.Tensor:
    """Fold a basis symmetric in its ν trailing axes onto sorted multi-indices.

    ``Σ_{a_1..a_ν} U[..., a] Π x_{a_ξ} = Σ_{a_1<=..<=a_ν} U[..., a] · (#orderings of a) · Π x_{a_ξ}``,
    so [p, m, d, ..., d] becomes [p, m, n_monomials].
    """
    dim = basis.shape[-1]
    indices = _sorted_multi_indices(dim, correlation)
    orderings = torch.tensor(
        [len(set(itertools.permutations(row.tolist()))) for row in indices], dtype=basis.dtype
    )
    return basis[(..., *indices.T)] * orderings
