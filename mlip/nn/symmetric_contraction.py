"""The higher-order product of MACE (Batatia et al. 2022, Eq. 10).

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
from torch import nn

from mlip.nn.irreps import channel_irreps, from_channels, to_channels
from mlip.nn.tensor_product.backend import check_backend, uses_cueq


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


def _monomial_recursion(dim: int, correlation: int) -> tuple[torch.Tensor, torch.Tensor]:
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


class SymmetricContraction(nn.Module):
    """Eq. 10 with element-dependent weights.

    Input ``[n_nodes, irreps_in.dim]`` with ``irreps_in = k x (l_1 + l_2 + ...)``, species
    ``[n_nodes]``; output ``[n_nodes, irreps_out.dim]`` with ``irreps_out = k x (L_1 + ...)``.

    Because each basis tensor is symmetric, the ν-fold product of A is only needed on
    sorted multi-indices (monomials ``A_{a_1} ... A_{a_ν}`` with a_1 <= ... <= a_ν):
    B = Σ_ν Σ_η w_η (U'_η · monomials_ν(A)), with U' the basis folded by `compress_symmetric`.

    ``normalization``: each basis tensor has unit norm over its 2L+1 components and the
    factors' indices (``"norm"``), or each component has (``"component"``: the tensors and
    so the weights' effect scaled by sqrt(2L+1), as e3nn and mace-torch normalise irreps).

    ``parametrization``: the weights are learned on our orthonormal basis (``"orthonormal"``:
    p weights per path, initialised N(0, 1/p²)), or on every Clebsch-Gordan coupling chain
    (``"coupling"``: k ≥ p weights, initialised N(0, 1/k²), acting through `coupling_frame`),
    as mace-torch's are. The functions are the same; the second trains the higher orders
    with a smaller start and larger Adam steps (docs/accuracy.md).
    """

    def __init__(
        self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, num_elements: int, backend: str = "e3nn",
        normalization: str = "norm", parametrization: str = "orthonormal",
    ):
        super().__init__()
        if parametrization not in ("orthonormal", "coupling"):
            raise ValueError(f"parametrization must be 'orthonormal' or 'coupling', got {parametrization!r}")
        # cuequivariance on CUDA (mlip.nn.tensor_product.symmetric_contraction), see `uses_cueq`
        self.backend = check_backend(backend)
        self.__dict__["_cueq"] = None  # built on first CUDA use, kept out of the state dict
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.correlation = int(correlation)
        num_channels, per_channel_in = channel_irreps(self.irreps_in)
        num_channels_out, per_channel_out = channel_irreps(self.irreps_out)
        assert num_channels == num_channels_out, f"channels differ: {self.irreps_in} vs {self.irreps_out}"
        self.per_channel_out = per_channel_out
        dtype = torch.get_default_dtype()
        # Monomials of degree ν are built from those of degree ν-1: A_{a_1..a_ν} = A_{a_1..a_{ν-1}} A_{a_ν}.
        for nu in range(2, self.correlation + 1):
            parent, last = _monomial_recursion(per_channel_in.dim, nu)
            self.register_buffer(f"parent_{nu}", parent, persistent=False)
            self.register_buffer(f"last_{nu}", last, persistent=False)
        if normalization not in ("norm", "component"):
            raise ValueError(f"normalization must be 'norm' or 'component', got {normalization!r}")
        self.weights = nn.ParameterDict()
        self.weight_scale: dict[str, float] = {}  # the basis normalisation, applied to the weights
        self.paths: list[list[tuple[int, str]]] = []  # per output irrep: (ν, name) with a non-empty basis
        for i_out, (_, ir_out) in enumerate(per_channel_out):
            paths = []
            for nu in range(1, self.correlation + 1):
                basis = product_basis(per_channel_in, nu, ir_out)
                if basis.shape[0] == 0:
                    continue
                name = f"{i_out}_{nu}"
                self.register_buffer(f"basis_{name}", compress_symmetric(basis, nu).to(dtype))
                if parametrization == "coupling":
                    self.register_buffer(f"frame_{name}", coupling_frame(per_channel_in, nu, ir_out).to(dtype))
                size = getattr(self, f"frame_{name}").shape[0] if parametrization == "coupling" else basis.shape[0]
                weight = torch.randn(num_elements, num_channels, size, dtype=dtype) / size
                self.weights[name] = nn.Parameter(weight)
                self.weight_scale[name] = math.sqrt(ir_out.dim) if normalization == "component" else 1.0
                paths.append((nu, name))
            self.paths.append(paths)

    def forward(self, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        if uses_cueq(self.backend, node_feats):
            return self.forward_cueq(node_feats, species)
        x = to_channels(node_feats, self.irreps_in)  # [n, k, d]
        n, k, _ = x.shape
        monomials = {1: x}  # degree ν: [n, k, T_ν]
        for nu in range(2, self.correlation + 1):
            parent, last = getattr(self, f"parent_{nu}"), getattr(self, f"last_{nu}")
            monomials[nu] = monomials[nu - 1].index_select(2, parent) * x.index_select(2, last)
        outputs = []
        for paths, (_, ir_out) in zip(self.paths, self.per_channel_out):
            out = x.new_zeros(n, k, ir_out.dim)
            for nu, name in paths:
                basis = getattr(self, f"basis_{name}")  # [p, 2L+1, T_ν]
                features = torch.einsum("nkt,pmt->nkpm", monomials[nu], basis)
                out = out + torch.einsum("nkpm,nkp->nkm", features, self.scaled_weight(name).index_select(0, species))
            outputs.append(out)
        return from_channels(torch.cat(outputs, dim=-1), self.irreps_out)

    def scaled_weight(self, name: str) -> torch.Tensor:
        """The weights of path ``name`` on our basis, times its normalisation: [num_elements, k, n_basis]."""
        weight = self.weights[name]
        frame = getattr(self, f"frame_{name}", None)
        if frame is not None:
            weight = weight @ frame
        scale = self.weight_scale[name]
        return weight if scale == 1.0 else weight * scale

    def forward_cueq(self, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """The same contraction evaluated by cuequivariance on our weights (any device it supports)."""
        from mlip.nn.tensor_product.symmetric_contraction import CueqContraction

        cached = self.__dict__["_cueq"]
        if cached is None or cached.device != node_feats.device or cached.dtype != node_feats.dtype:
            cached = CueqContraction(self, node_feats.device, node_feats.dtype)
            self.__dict__["_cueq"] = cached
        return cached(self, node_feats, species)

