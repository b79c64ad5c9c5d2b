"""Tensors laid out back to back in one byte buffer, so that one copy moves them all.

A batch of atomic graphs is a dozen or more small tensors; each host-to-GPU copy of one
costs host time (an allocation, a launch: about 20 µs on the GPU machine's host). Laid out
in one ``uint8`` buffer, they cross in one copy and are used as views of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

ALIGN = 16  # bytes: every tensor starts at a multiple of any element size


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in a byte buffer."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in elements of ``dtype`` from the buffer's start

    @property
    def byte_range(self) -> tuple[int, int]:
        start = self.offset * self.dtype.itemsize
        return start, start + math.prod(self.shape) * self.dtype.itemsize


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def layout(tensors: Mapping[str, torch.Tensor]) -> tuple[list[Slot], int]:
    """Slots for ``tensors`` in their order, each aligned, and the buffer's size in bytes."""
    slots, size = [], 0
    for key, tensor in tensors.items():
        size = -(-size // ALIGN) * ALIGN
        shape = tuple(tensor.shape)
        slots.append(Slot(key, tensor.dtype, shape, _contiguous_stride(shape), size // tensor.element_size()))
        size += tensor.numel() * tensor.element_size()
    return slots, -(-size // ALIGN) * ALIGN


def views_of(buffer: torch.Tensor, slots: Sequence[Slot]) -> dict[str, torch.Tensor]:
    """The tensors laid out in a byte buffer (``uint8``, on any device), as views of it."""
    typed: dict[torch.dtype, torch.Tensor] = {}
    out = {}
    for slot in slots:
        if slot.dtype not in typed:
            typed[slot.dtype] = buffer.view(slot.dtype)
        out[slot.key] = typed[slot.dtype].as_strided(slot.shape, slot.stride, slot.offset)
    return out


def flatten(tensors: Mapping[str, torch.Tensor], device: torch.device | str | None = None,
            pin_memory: bool = False) -> tuple[torch.Tensor, list[Slot], dict[str, torch.Tensor]]:
    """A new byte buffer holding copies of ``tensors`` (on ``device``, default: the first
    tensor's), its slots, and the views of it that stand for them."""
    slots, size = layout(tensors)
    if device is None:
        device = next(iter(tensors.values())).device if tensors else "cpu"
    buffer = torch.zeros(size, dtype=torch.uint8, device=device, pin_memory=pin_memory)  # gaps too
    views = views_of(buffer, slots)
    for key, tensor in tensors.items():
        views[key].copy_(tensor)
    return buffer, slots, views
