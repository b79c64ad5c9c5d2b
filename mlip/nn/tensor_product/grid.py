"""The ``grid`` backend: the edge tensor product as a product of functions on the sphere.

The Gaunt tensor product (Luo et al., ICLR 2024) couples two sets of irreps through
the integral of three spherical harmonics, ``∫ Y_l1m1 Y_l2m2 Y_l3m3 dΩ``: that is,
it multiplies the two functions the irreps describe and reads the degrees of the
product back. On a quadrature grid exact for degree L1 + L2 + L3 the product is
pointwise and the read-back is a weighted sum, exact to round-off
(`mlip.nn.spherical`). For the convolution of MACE Eq. 8 / Facet's message,

    f_j(x)  = Σ_lm h_{j,c,lm} Y_lm(x)                          node j, channel c (once per node)
    g_ij(x) = Σ_l2 w_{ij,c,l2} Σ_m2 Y_l2m2(r̂_ij) Y_l2m2(x)      edge harmonics, radial weight per (c, l2)
    out_i   = ∫ Y_l3m3(x) Σ_j f_j(x) g_ij(x) dΩ                 summed on the grid, projected once per node

What this cannot represent, against the 'uvu' product (`ChannelwiseConvolution`):
- a path weight is the product of an l2 weight and the Gaunt coefficient, so paths
  that share (c, l2) but differ in l1 or l3 cannot be weighted apart;
- paths with l1 + l2 + l3 odd vanish (the Gaunt integral is zero there): no cross
  products such as 1o x 1o -> 1e; inputs and outputs are natural-parity irreps only.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from mlip.nn.irreps import ChannelLayout, channel_irreps
from mlip.nn.scatter import scatter_sum
from mlip.nn.spherical import SphericalGrid, natural_parity_ls


def gaunt_output_irreps(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps) -> o3.Irreps:
    """One channel's output irreps: the target degrees a Gaunt product of the inputs reaches."""
    ls_in, ls_sh = natural_parity_ls(irreps_in), natural_parity_ls(irreps_sh)
    reached = {
        l3 for l1 in ls_in for l2 in ls_sh for l3 in range(abs(l1 - l2), l1 + l2 + 1) if (l1 + l2 + l3) % 2 == 0
    }
    ls_out = sorted({ir.l for _, ir in o3.Irreps(irreps_target) if ir.p == (-1) ** ir.l} & reached)
    return o3.Irreps([(1, (l, (-1) ** l)) for l in ls_out])


class GridConvolution(nn.Module):
    """Σ over edges of the Gaunt product of node features and weighted edge harmonics.

    Same interface as `ChannelwiseConvolution`: [n, irreps_in.dim], [E, irreps_sh.dim]
    (e3nn's 'component' normalisation), [E, weight_numel] -> [num_nodes, irreps_out.dim].
    The weights are [E, channels, len(irreps_sh)] flattened: one per channel and edge degree.

    Args:
        irreps_in: node feature irreps (one multiplicity, natural parity).
        irreps_sh: edge spherical-harmonic irreps.
        irreps_target: the output degrees wanted; those the product reaches are kept.
        resolution: Gauss-Legendre nodes in θ, or None for the smallest exact grid.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps,
                 resolution: int | None = None):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.num_channels, per_channel = channel_irreps(self.irreps_in)
        out_per_channel = gaunt_output_irreps(per_channel, self.irreps_sh, irreps_target)
        if not len(out_per_channel):
            raise ValueError(f"no degree of {irreps_target} is reached by {per_channel} x {self.irreps_sh} on the grid")
        self.irreps_out = o3.Irreps([(self.num_channels, ir) for _, ir in out_per_channel])
        self.layout_in, self.layout_out = ChannelLayout(self.irreps_in), ChannelLayout(self.irreps_out)
        degree = per_channel.lmax + self.irreps_sh.lmax + out_per_channel.lmax
        self.grid = SphericalGrid(per_channel, resolution, degree, irreps_out=out_per_channel)
        # edge harmonics on the grid, one function per degree: [sh.dim, len(sh) * G], block-diagonal in l
        ls_sh, points = natural_parity_ls(self.irreps_sh), self.grid.points
        sample = torch.zeros(self.irreps_sh.dim, len(ls_sh), points.shape[0], dtype=points.dtype)
        for k, (l, s) in enumerate(zip(ls_sh, self.irreps_sh.slices())):
            sample[s, k] = o3.spherical_harmonics(l, points, normalize=True, normalization="integral").T
        self.register_buffer("sh_sample", sample.flatten(1), persistent=False)
        self.num_sh = len(ls_sh)
        self.weight_numel = self.num_channels * self.num_sh
        self.register_buffer("normalization", torch.ones((), dtype=points.dtype), persistent=False)
        self.normalization.copy_(self._unit_second_moment())

    def weight_order(self, x: torch.Tensor) -> None:
        return None  # our own layout for every input

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
        f = self.grid.to_grid(self.layout_in.to_channels(node_feats))  # [n, C, G], once per node
        harmonics = (edge_sh @ self.sh_sample).view(edge_sh.shape[0], self.num_sh, -1)  # [E, L2, G]
        g = torch.bmm(weights.view(-1, self.num_channels, self.num_sh), harmonics)  # [E, C, G]
        products = scatter_sum(f.index_select(0, sender) * g, receiver, num_nodes)  # [num_nodes, C, G]
        return self.normalization * self.layout_out.from_channels(self.grid.from_grid(products))

    @torch.no_grad()
    def _unit_second_moment(self) -> torch.Tensor:
        """The constant that gives unit mean square output for unit-normal features and
        weights and one random edge per node (a fixed probe, so every build agrees)."""
        generator = torch.Generator().manual_seed(0)
        dtype, n = self.grid.points.dtype, 512
        x = torch.randn(n, self.irreps_in.dim, generator=generator, dtype=dtype)
        sh = o3.spherical_harmonics(self.irreps_sh, torch.randn(n, 3, generator=generator, dtype=dtype),
                                    normalize=True, normalization="component")
        w = torch.randn(n, self.weight_numel, generator=generator, dtype=dtype)
        index = torch.arange(n)
        out = self.forward(x, sh, w, index, index, n)  # with normalization 1
        return out.pow(2).mean().rsqrt()
