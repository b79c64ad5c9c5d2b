"""Sums over edges or nodes into segments (differentiable to any order)."""

from __future__ import annotations

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[index[e]] += src[e]`` along dim 0: [n_src, ...] -> [dim_size, ...]."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add(0, index, src)
