"""Clipping by the global gradient norm, as `torch.nn.utils.clip_grad_norm_`, in two halves:
the norm is also the finite check's input, so it is computed once and reused. Both halves
queue device work only (no host read), so a CUDA graph can hold them."""

from __future__ import annotations

import torch


def global_norm(gradients: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``gradients`` together (a 0-d device tensor; NaN/inf if any entry is)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients)))


def clip_by_norm_(gradients: list[torch.Tensor], norm: torch.Tensor, max_norm: float) -> None:
    """Scale ``gradients`` in place so that their global ``norm`` is at most ``max_norm``
    (clip_grad_norm_'s coefficient, its 1e-6 included)."""
    torch._foreach_mul_(gradients, torch.clamp(float(max_norm) / (norm + 1e-6), max=1.0))
