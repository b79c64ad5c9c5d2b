"""Per-channel layout: the index-based `ChannelLayout` against the slicing functions."""

import torch
from e3nn import o3

from mlip.nn.irreps import ChannelLayout, from_channels, to_channels


def test_channel_layout_equals_the_functions_and_inverts():
    irreps = o3.Irreps("3x0e+3x1o+3x1o+3x2e+3x0e+3x3o")  # repeated entries, as a convolution's output has
    layout = ChannelLayout(irreps)
    x = torch.randn(5, irreps.dim, requires_grad=True)
    channels = layout.to_channels(x)
    assert torch.equal(channels, to_channels(x, irreps))
    assert torch.equal(layout.from_channels(channels), x)
    y = torch.randn_like(channels)
    assert torch.equal(layout.from_channels(y), from_channels(y, irreps))
    (grad,) = torch.autograd.grad((channels * y).sum(), x)
    assert torch.equal(grad, from_channels(y, irreps))
