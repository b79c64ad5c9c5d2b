"""Exponential moving average of model weights, used for validation and export.

    θ_ema <- d θ_ema + (1 - d) θ,  d = min(decay, (1 + n) / (10 + n)) after n updates

The averaged copy is a submodule, so checkpoints hold it and a resume is exact.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage(nn.Module):
    def __init__(self, module: nn.Module, decay: float = 0.99):
        super().__init__()
        self.decay = float(decay)
        self.module = copy.deepcopy(module)
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        n = int(self.num_updates)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        # matched by name, not position: a deep copy of e3nn's fx-compiled tensor products
        # holds its constants as extra buffers (`_tensor_constant0`) that the original lacks
        parameters, buffers = dict(self.module.named_parameters()), dict(self.module.named_buffers())
        for name, current in module.named_parameters():
            parameters[name].lerp_(current.detach(), 1.0 - decay)
        for name, current in module.named_buffers():
            buffers[name].copy_(current)
        self.num_updates += 1
