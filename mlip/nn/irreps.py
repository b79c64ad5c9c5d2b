"""Moving between e3nn's irreps layout and a per-channel layout.

e3nn stores ``k x (l_1 + l_2 + ...)`` features as one block per irrep, each block
``[k, 2l+1]`` flattened. Per-channel operations (the symmetric contraction) want
``[n, k, Σ(2l+1)]``: every channel holds one copy of each irrep.
"""

from __future__ import annotations

import torch
from e3nn import o3


def channel_irreps(irreps: o3.Irreps) -> tuple[int, o3.Irreps]:
    """Split ``kx0e+kx1o`` into (k, ``0e+1o``); every irrep must have the same multiplicity."""
    irreps = o3.Irreps(irreps)
    muls = {mul for mul, _ in irreps}
    assert len(muls) == 1, f"irreps {irreps} must have one multiplicity for all irreps"
    return muls.pop(), o3.Irreps([(1, ir) for _, ir in irreps])


def to_channels(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """[n, irreps.dim] (e3nn layout, equal multiplicities k) -> [n, k, Σ(2l+1)]."""
    blocks = [x[:, s].reshape(x.shape[0], mul, ir.dim) for (mul, ir), s in zip(irreps, irreps.slices())]
    return torch.cat(blocks, dim=-1)


def from_channels(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """Inverse of `to_channels`: [n, k, Σ(2l+1)] -> [n, irreps.dim]."""
    blocks, start = [], 0
    for mul, ir in irreps:
        blocks.append(x[:, :, start : start + ir.dim].reshape(x.shape[0], mul * ir.dim))
        start += ir.dim
    return torch.cat(blocks, dim=-1)


class ChannelLayout(torch.nn.Module):
    """`to_channels` and `from_channels` as one ``index_select`` each.

    The functions slice once per irrep, and each slice's backward writes a full-size
    gradient; for irreps with many entries (a convolution's output has one per path:
    ~100 at ℓ ≤ 6) that dominates the layer. Here the two permutations are buffers.
    """

    def __init__(self, irreps: o3.Irreps):
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.num_channels, per_channel = channel_irreps(self.irreps)
        self.channel_dim = per_channel.dim
        positions = torch.arange(self.irreps.dim)
        self.register_buffer("gather", to_channels(positions[None], self.irreps).flatten(), persistent=False)
        self.register_buffer("scatter", torch.argsort(self.gather), persistent=False)

    def to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """[n, irreps.dim] -> [n, k, Σ(2l+1)]."""
        return x.index_select(1, self.gather).view(x.shape[0], self.num_channels, self.channel_dim)

    def from_channels(self, x: torch.Tensor) -> torch.Tensor:
        """[n, k, Σ(2l+1)] -> [n, irreps.dim]."""
        return x.reshape(x.shape[0], -1).index_select(1, self.scatter)
