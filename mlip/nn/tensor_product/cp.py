"""Low-rank CANDECOMP/PARAFAC (CP) tensor products (Tensor Decomposition Networks, Lin et al. 2025).

The channel-wise tensor product of one channel is a bilinear map given by a
three-way tensor, one slice per path p (the e3nn path with its normalisation):

    out_k = Σ_p w_p Σ_ij M^p_kij x_i y_j

A rank-R CP decomposition ``M^p ≈ Σ_r A^p_kr B^p_ir C^p_jr`` turns it into three
dense contractions and an element-wise product:

    u = x B,   v = y C,   out = ((u ⊙ v) ⊙ w_path(r)) Aᵀ

so its cost is O(R·d) per channel instead of a sum over O(L³) sparse paths.

- **Exact decomposition** (``rank="full"``): each slice ``M^p[:, :, j]`` is written by
  its SVD, giving a CP of rank Σ_j rank(M^p[:, :, j]). It reproduces the tensor
  product to round-off.
- **Rank R**: alternating least squares (ALS), the better of two starts (the R largest
  terms of the exact decomposition, and a seeded random one). The relative Frobenius
  fit error ‖M − M_R‖/‖M‖ is logged and reported (`CPConvolution.fit_errors`).
- **Path-weight sharing** (``share_paths=True``): one weight per channel for every
  path, i.e. ``w_p = w``. The summed tensor ``M = Σ_p M^p`` is equivariant as it stands
  and gets a single decomposition. Without sharing, each path has its own
  decomposition (rank ``min(R, exact rank)``) and its own weight.

Equivariance is exact at full rank. At rank R, for orthogonal representations, the
error of a bilinear map with weights w is bounded by
``‖f(Dx, Dy) − D f(x, y)‖ ≤ 2 Σ_p |w_p| ‖M^p − M^p_R‖_F ‖x‖ ‖y‖`` (`equivariance_bound`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from e3nn import o3

from mlip.nn.irreps import ChannelLayout, channel_irreps
from mlip.nn.kernels.cp_message import cp_messages
from mlip.nn.tensor_product.convolution import channelwise_instructions

log = logging.getLogger(__name__)


def path_tensors(irreps_in: str, irreps_sh: str, irreps_out: str, instructions: tuple) -> torch.Tensor:
    """[P, d_out, d_in, d_sh] float64: e3nn's channel-wise tensor product of one channel, path by path."""
    return _path_tensors(irreps_in, irreps_sh, irreps_out, instructions).clone()


@functools.lru_cache(maxsize=None)
def _path_tensors(irreps_in: str, irreps_sh: str, irreps_out: str, instructions: tuple) -> torch.Tensor:
    tp = o3.TensorProduct(
        o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_out), list(instructions),
        shared_weights=False, internal_weights=False,
    ).to(torch.float64)
    d_in, d_sh = tp.irreps_in1.dim, tp.irreps_in2.dim
    x = torch.eye(d_in, dtype=torch.float64).repeat_interleave(d_sh, dim=0)  # pairs (i, j), i major
    y = torch.eye(d_sh, dtype=torch.float64).repeat(d_in, 1)
    tensors = []
    for p in range(len(instructions)):
        weight = torch.zeros(d_in * d_sh, tp.weight_numel, dtype=torch.float64)
        weight[:, p] = 1.0
        out = tp(x, y, weight)  # [d_in * d_sh, d_out]
        tensors.append(out.T.reshape(-1, d_in, d_sh))
    return torch.stack(tensors)


@dataclass
class CPFactors:
    """Factors of one CP decomposition: M[k, i, j] ≈ Σ_r A[k, r] B[i, r] C[j, r]."""

    A: torch.Tensor  # [d_out, R]
    B: torch.Tensor  # [d_in, R]
    C: torch.Tensor  # [d_sh, R]

    @property
    def rank(self) -> int:
        return self.A.shape[1]


def _khatri_rao(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[I, R], [J, R] -> [I·J, R] with row i·J + j = X[i] ⊙ Y[j]."""
    return (X[:, None, :] * Y[None, :, :]).reshape(-1, X.shape[1])


def reconstruct(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Σ_r A[k, r] B[i, r] C[j, r]: [K, I, J]."""
    return (A @ _khatri_rao(B, C).T).reshape(A.shape[0], B.shape[0], C.shape[0])


def exact_cp(tensor: torch.Tensor, tolerance: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An exact CP of [d_out, d_in, d_sh]: the SVD of each slice M[:, :, j], terms by decreasing σ."""
    terms = []
    scale = tensor.abs().max().clamp_min(1e-300)
    for j in range(tensor.shape[2]):
        u, s, vh = torch.linalg.svd(tensor[:, :, j], full_matrices=False)
        for k in range(s.shape[0]):
            if s[k] > tolerance * scale:
                e = torch.zeros(tensor.shape[2], dtype=tensor.dtype)
                e[j] = 1.0
                terms.append((float(s[k]), u[:, k] * s[k], vh[k], e))
    terms.sort(key=lambda term: -term[0])
    if not terms:
        zeros = [tensor.new_zeros(n, 0) for n in tensor.shape]
        return zeros[0], zeros[1], zeros[2]
    return tuple(torch.stack([term[m] for term in terms], dim=1) for m in (1, 2, 3))


def _als(tensor, A, B, C, iterations: int, tolerance: float):
    """Alternating least squares from (A, B, C); returns the factors and ‖M − M_R‖_F."""
    K, I, J = tensor.shape
    by_k = tensor.reshape(K, I * J)  # unfoldings, each against the Khatri-Rao product of the others
    by_i = tensor.permute(1, 0, 2).reshape(I, K * J)
    by_j = tensor.permute(2, 0, 1).reshape(J, K * I)
    norm = float(torch.linalg.vector_norm(tensor))
    previous = residual = float(torch.linalg.vector_norm(by_k - A @ _khatri_rao(B, C).T))
    for _ in range(iterations):
        A = by_k @ _khatri_rao(B, C) @ torch.linalg.pinv((B.T @ B) * (C.T @ C))
        B = by_i @ _khatri_rao(A, C) @ torch.linalg.pinv((A.T @ A) * (C.T @ C))
        C = by_j @ _khatri_rao(A, B) @ torch.linalg.pinv((A.T @ A) * (B.T @ B))
        residual = float(torch.linalg.vector_norm(by_k - A @ _khatri_rao(B, C).T))
        if previous - residual < tolerance * norm:
            break
        previous = residual
    return A, B, C, residual


def cp_als(tensor: torch.Tensor, rank: int, iterations: int = 500, tolerance: float = 1e-10, seed: int = 0) -> CPFactors:
    """Rank-``rank`` CP of a float64 tensor by ALS.

    Two starts, the better kept: the ``rank`` leading terms of `exact_cp` (often a
    stationary point already: whole irreps dropped) and a seeded random start (lower
    error at moderate ranks, e.g. 0.60 instead of 0.66 at rank 64 for ℓ ≤ 3).
    """
    A, B, C = exact_cp(tensor)
    if rank >= A.shape[1]:  # the exact decomposition is at most this rank
        return CPFactors(A, B, C)
    generator = torch.Generator().manual_seed(seed)
    starts = [
        (A[:, :rank].clone(), B[:, :rank].clone(), C[:, :rank].clone()),
        tuple(torch.randn(n, rank, generator=generator, dtype=tensor.dtype) for n in tensor.shape),
    ]
    best = min((_als(tensor, *start, iterations, tolerance) for start in starts), key=lambda fit: fit[3])
    return CPFactors(*best[:3])


@functools.lru_cache(maxsize=None)
def decompose(
    irreps_in: str, irreps_sh: str, irreps_out: str, instructions: tuple, rank: int | None, share_paths: bool
) -> list[CPFactors]:
    """CP factors (float64, CPU) of a channel-wise tensor product: one per path, or one shared.

    ``rank=None`` is the exact decomposition. Cached per arguments (ALS takes seconds).
    """
    tensors = path_tensors(irreps_in, irreps_sh, irreps_out, instructions)
    rank = 1 << 30 if rank is None else rank
    if share_paths:
        return [cp_als(tensors.sum(0), rank)]
    factors = []
    for tensor in tensors:  # a path writes only its own output slot: fit those rows, embed A back
        rows = tensor.flatten(1).abs().amax(1) > 0
        fit = cp_als(tensor[rows], rank)
        A = tensor.new_zeros(tensor.shape[0], fit.rank)
        A[rows] = fit.A
        factors.append(CPFactors(A, fit.B, fit.C))
    return factors


def equivariance_bound(residual_norms: torch.Tensor, path_weights: torch.Tensor) -> torch.Tensor:
    """``2 Σ_p |w_p| ‖M^p − M^p_R‖_F``: bounds ‖f(Dx, Dy) − D f(x, y)‖ / (‖x‖ ‖y‖) for orthogonal D.

    ``residual_norms`` [P] (`CPConvolution.residual_norms`), ``path_weights`` [..., P]
    (or [..., 1] with shared paths).
    """
    return 2.0 * (path_weights.abs() * residual_norms.to(path_weights.dtype)).sum(-1)


class CPConvolution(torch.nn.Module):
    """`ChannelwiseConvolution`'s interface with the tensor product in CP form (``tp_backend="cp"``).

    Args:
        irreps_in: node feature irreps (all with the same multiplicity).
        irreps_sh: edge spherical-harmonic irreps.
        irreps_target: which output irreps to keep.
        rank: CP rank (per path without sharing), or ``"full"`` for the exact product.
        share_paths: one weight per channel for all paths (path-weight sharing).
        kernel: the edge step's implementation (`mlip.nn.kernels.cp_message`): ``"auto"``
            (Triton on CUDA), ``"torch"`` or ``"triton"``.
        learn_factors: train the factor matrices A, B, C (starting from the fit) instead of
            keeping them fixed; `residual_norms` then follow the trained factors, and so
            does the equivariance bound.

    The projections are applied where they are cheapest: ``x B`` on nodes before the
    gather, ``(·) Aᵀ`` on nodes after the sum over edges (both are linear). The edge
    step, ``Σ_e u[sender] · v · w``, is one fused gather-multiply-scatter that never
    writes an [E, channels, rank] tensor.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_target: o3.Irreps,
        rank: int | str = "full",
        share_paths: bool = False,
        kernel: str = "auto",
        learn_factors: bool = False,
    ):
        super().__init__()
        self.kernel = kernel
        if not (rank == "full" or (isinstance(rank, int) and rank > 0)):
            raise ValueError(f"cp rank must be a positive integer or 'full', got {rank!r}")
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.irreps_out, instructions = channelwise_instructions(self.irreps_in, self.irreps_sh, o3.Irreps(irreps_target))
        self.num_channels, per_channel_in = channel_irreps(self.irreps_in)
        _, self.per_channel_out = channel_irreps(self.irreps_out)
        self.num_paths = len(instructions)
        self.layout_in, self.layout_out = ChannelLayout(self.irreps_in), ChannelLayout(self.irreps_out)
        key = (str(per_channel_in), str(self.irreps_sh), str(self.per_channel_out),
               tuple((i, j, k, mode, True) for i, j, k, mode, _ in instructions))
        self.factors = decompose(*key, None if rank == "full" else int(rank), share_paths)
        self.weight_numel = self.num_channels * (1 if share_paths else self.num_paths)
        dtype = torch.get_default_dtype()
        for name in ("A", "B", "C"):
            value = torch.cat([getattr(f, name) for f in self.factors], dim=1).to(dtype)
            if learn_factors:
                self.register_parameter(name, torch.nn.Parameter(value))
            else:
                self.register_buffer(name, value, persistent=False)
        # the exact tensors the factors approximate, for the fit error of learned factors
        targets = path_tensors(*key)
        self.register_buffer("targets", (targets.sum(0, keepdim=True) if share_paths else targets).to(dtype),
                             persistent=False)
        path_of_rank = torch.cat([torch.full((f.rank,), p, dtype=torch.long) for p, f in enumerate(self.factors)])
        self.register_buffer("path_of_rank", path_of_rank, persistent=False)
        log.info(
            "CP tensor product %s x %s: %d decomposition(s), total rank %d, largest fit error %.2e",
            per_channel_in, self.irreps_sh, len(self.factors), self.A.shape[1], max(self.fit_errors),
        )

    def residual_norms(self) -> torch.Tensor:
        """‖M^p − Σ_r A B C‖_F of each decomposition (one per path, or one shared), current factors."""
        norms = []
        for p, target in enumerate(self.targets):
            ranks = self.path_of_rank == p
            norms.append(torch.linalg.vector_norm(target - reconstruct(self.A[:, ranks], self.B[:, ranks], self.C[:, ranks])))
        return torch.stack(norms).detach()

    @property
    def fit_errors(self) -> list[float]:
        """Relative Frobenius error of each decomposition, ‖M − M_R‖ / ‖M‖, current factors."""
        scale = torch.linalg.vector_norm(self.targets.flatten(1), dim=1).clamp_min(1e-300)
        return (self.residual_norms() / scale).tolist()

    def weight_order(self, x: torch.Tensor) -> None:
        return None

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_sh: torch.Tensor,
        weights: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        num_nodes: int,
        weights_ordered: bool = False,
    ) -> torch.Tensor:
        """[n, irreps_in.dim], [E, irreps_sh.dim], [E, weight_numel] -> [num_nodes, irreps_out.dim].

        Weights: [E, channels] with shared paths, else e3nn's layout [E, paths x channels].
        """
        u = (self.layout_in.to_channels(node_feats) @ self.B).contiguous()  # [n, C, R]
        v = edge_sh @ self.C  # [E, R]
        w = weights.view(weights.shape[0], len(self.factors), self.num_channels)  # [E, P, C] (P = 1 shared)
        summed = cp_messages(u, v, w, self.path_of_rank, sender, receiver, num_nodes, self.kernel)  # [n, C, R]
        return self.layout_out.from_channels(summed @ self.A.T)
