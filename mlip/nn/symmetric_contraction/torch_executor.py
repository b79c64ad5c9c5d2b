"""The symmetric contraction evaluated by torch, on any device: the reference executor.

Each basis tensor is symmetric in its ν factors, so the ν-fold product of A is only
needed on sorted multi-indices: the monomials ``A_{a_1} ... A_{a_ν}`` with
a_1 <= ... <= a_ν, built from those of degree ν-1 (``A_{a_1..a_ν} = A_{a_1..a_{ν-1}} A_{a_ν}``).
With the basis folded onto them (`basis.compress_symmetric`, U'), Eq. 10 is

    B_{i,kLM} = Σ_ν Σ_η w_{z_i k η} Σ_t U'_{η M t} monomial^{(ν)}_{i k t}
"""

from __future__ import annotations

import torch

from mlip.nn.irreps import from_channels, to_channels


def monomials(x: torch.Tensor, recursion: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Monomials of each degree ν of the per-channel features ``x`` [n, k, d]: {ν: [n, k, T_ν]}.

    ``recursion[ν]`` is `basis.monomial_recursion`'s (parent, last) for ν = 2..correlation.
    """
    out = {1: x}
    for nu in sorted(recursion):
        parent, last = recursion[nu]
        out[nu] = out[nu - 1].index_select(2, parent) * x.index_select(2, last)
    return out


def path_features(monomials_nu: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Each basis function of one path on the monomials: [n, k, T] x [p, 2L+1, T] -> [n, k, p, 2L+1]."""
    return torch.einsum("nkt,pmt->nkpm", monomials_nu, basis)


def evaluate(contraction, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """`SymmetricContraction`'s output [n, irreps_out.dim] for ``node_feats`` [n, irreps_in.dim]
    and ``species`` [n], from its buffers and its weights on our basis (`scaled_weight`)."""
    x = to_channels(node_feats, contraction.irreps_in)  # [n, k, d]
    n, k, _ = x.shape
    recursion = {nu: (getattr(contraction, f"parent_{nu}"), getattr(contraction, f"last_{nu}"))
                 for nu in range(2, contraction.correlation + 1)}
    by_degree = monomials(x, recursion)
    outputs = []
    for paths, (_, ir_out) in zip(contraction.paths, contraction.per_channel_out):
        out = x.new_zeros(n, k, ir_out.dim)
        for nu, name in paths:
            features = path_features(by_degree[nu], getattr(contraction, f"basis_{name}"))
            out = out + torch.einsum("nkpm,nkp->nkm", features, contraction.scaled_weight(name).index_select(0, species))
        outputs.append(out)
    return from_channels(torch.cat(outputs, dim=-1), contraction.irreps_out)
