"""Facet's equivariant node update: an ordinary MLP applied pointwise on the sphere.

Each channel of a node's features is a function on the sphere (`mlip.nn.spherical`).
Sampled on the grid, the node holds a [G, C] table: C channel values at each of G
directions. An MLP over channels, the same at every point, mixes channels and degrees
non-linearly, and the projection back gives features of the output irreps:

    h'_i = P[ W_2 σ(W_1 S[h_i](x_g)) ]                     (Miklaucic et al. 2025)

S samples, P projects (quadrature), possibly onto other degrees than came in: the
activation makes products of the input degrees, so invariants such as Σ_m h_2m h_2m
reach the ℓ = 0 output (what MACE's symmetric contraction builds explicitly).

A rotation of the features rotates the sampled function, and an MLP applied pointwise
commutes with that; only the grid breaks the symmetry. Without σ the map is linear,
its output band-limited, and P exact (to round-off, on a grid exact for degree
L_in + L_out); with σ the error is the aliasing of the out-of-band part, and falls as
``resolution`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from mlip.nn.irreps import ChannelLayout
from mlip.nn.kernels.grid_activation import BACKENDS, grid_activation
from mlip.nn.radial import NormalizedSiLU
from mlip.nn.spherical import SphericalGrid


class SphericalGridMLP(nn.Module):
    """[n, irreps.dim] -> [n, irreps_out.dim]: sample, MLP over channels at every grid point, project.

    Args:
        irreps: input irreps, one multiplicity C, natural parity (``Cx0e+Cx1o+...``).
        hidden: width of the MLP's hidden layer, or the widths of several.
        resolution: Gauss-Legendre nodes in θ (``2 resolution²`` points), or None for the
            smallest grid exact for linear maps (degree L_in + L_out).
        activation: False leaves out σ (a linear, exactly equivariant map; for tests).
        irreps_out: output irreps, one multiplicity, natural parity (default ``irreps``).
        backend: of the hidden layer on the grid (one hidden layer with σ): ``"torch"`` (matmuls
            that write the [n, G, H] tables), ``"triton"`` or ``"auto"`` (the fused kernel of
            `mlip.nn.kernels.grid_activation` on CUDA, which writes nothing of size G).
    """

    def __init__(self, irreps: o3.Irreps, hidden: int | Sequence[int], resolution: int | None = None,
                 activation: bool = True, irreps_out: o3.Irreps | None = None, backend: str = "torch"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"grid MLP backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.irreps = o3.Irreps(irreps)
        self.irreps_out = o3.Irreps(irreps_out) if irreps_out is not None else self.irreps
        self.layout, self.layout_out = ChannelLayout(self.irreps), ChannelLayout(self.irreps_out)
        per_channel = lambda irreps: o3.Irreps([(1, ir) for _, ir in irreps])  # noqa: E731
        degree = self.irreps.lmax + self.irreps_out.lmax
        self.grid = SphericalGrid(per_channel(self.irreps), resolution, degree, irreps_out=per_channel(self.irreps_out))
        widths = [self.layout.num_channels, *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out, bias=False), NormalizedSiLU() if activation else nn.Identity()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], self.layout_out.num_channels, bias=False))
        for linear in self.mlp[::2]:
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(linear.in_features))

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        # Sampling acts on the degrees and the MLP's first linear on the channels, so they commute:
        # W_1 S[h] = S[W_1 h], and likewise P[W_2 a] = W_2 P[a]. Mixing channels before sampling and
        # after projecting does the two widest linears on D = Σ(2l+1) rows instead of G grid
        # points (9 against 72 at ℓ ≤ 2) and never writes a [n, G, C] grid table: only the
        # hidden layer lives on the grid.
        first, *inner, last = self.mlp
        coefficients = first(self.layout.to_channels(node_feats).transpose(1, 2))  # [n, D, H]: W_1 h
        if self.backend != "torch" and len(inner) == 1 and isinstance(inner[0], NormalizedSiLU):
            projected = grid_activation(coefficients, self.grid.sample, self.grid.project, self.backend)
        else:
            hidden = torch.matmul(self.grid.sample.T, coefficients)  # [n, G, H]: S[W_1 h]
            for layer in inner:  # σ, then any further hidden linears and σ, pointwise on the grid
                hidden = layer(hidden)
            projected = torch.matmul(self.grid.project.T, hidden)  # [n, D', H]: P[σ(...)]
        return self.layout_out.from_channels(last(projected).transpose(1, 2))  # W_2 P[...]: [n, C', D'] -> e3nn
