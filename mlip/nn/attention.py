"""Multi-head self-attention over each atom's neighbour tokens, on PyTorch's fused attention kernels.

Each atom i holds a sequence of K tokens x_ik [n, K, C], one per neighbour (slots from
`mlip.nn.neighbour_slots`). Every token attends to the atom's other tokens:

    a_ik = Σ_k' softmax_k'( q_ik · k_ik' / sqrt(d) + log f(r_ik') ) v_ik'       (per head)

through `torch.nn.functional.scaled_dot_product_attention`, so the GPU runs its flash or
memory-efficient kernel. The bias log f(r) (f the cutoff envelope, padded slots f = 0)
weighs each key by its envelope: a neighbour crossing the cutoff enters and leaves the
softmax continuously, so energies stay smooth, and padded slots take no part. Logits of
f below ``TINY`` are clamped (a weight of 1e-30 of the others): an atom with no neighbours
then averages its padded slots, which every user of the tokens multiplies by f = 0.

The fused kernels have no second derivative; a model trained on a derivative of its energy
(forces or stress by autograd, ``create_graph``) runs the attention through the math kernel
(``math_kernel=True``); inference, and training on direct forces alone, take the fused ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

TINY = 1e-30


class FeedForward(nn.Module):
    """Pre-norm MLP of a transformer block: LayerNorm, C -> hidden -> C with SiLU. [..., C] -> [..., C]."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NeighbourAttention(nn.Module):
    """Pre-norm multi-head self-attention among an atom's neighbour tokens: [n, K, C] -> [n, K, C].

    Args:
        channels: token width C (a multiple of ``heads``).
        heads: attention heads (each of width C / heads).
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention width {channels} is not a multiple of its {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, tokens: torch.Tensor, envelope: torch.Tensor, math_kernel: bool = False) -> torch.Tensor:
        """tokens [n, K, C], envelope [n, K] (cutoff weight of each slot; 0 where padded)."""
        n, slots, channels = tokens.shape
        q, k, v = self.qkv(self.norm(tokens)).view(n, slots, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        bias = torch.log(envelope.clamp(min=TINY)).to(q.dtype)[:, None, None, :]  # [n, 1, 1, K]: the keys' weights
        if math_kernel:
            with sdpa_kernel(SDPBackend.MATH):
                attended = scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attended = scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(attended.transpose(1, 2).reshape(n, slots, channels))
