"""Exponential moving average of model weights, used for validation and export.

    θ_ema <- d θ_ema + (1 - d) θ,  d = min(decay, (1 + n) / (10 + n)) after n updates

The averaged copy is a submodule, so checkpoints hold it and a resume is exact. One update
is one fused ``_foreach_lerp_`` over all parameters and one ``_foreach_copy_`` over the
buffers, and reads nothing from the device: the update count is mirrored on the host.
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
        self._host_updates: int | None = None  # num_updates on the host (read once, after a load)
        self._pairs: tuple | None = None  # (token, averaged params, params, averaged buffers, buffers)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_updates = None

    def _token(self, module: nn.Module) -> tuple:
        """What the cached pairs depend on: the source module, and where both keep their tensors
        (``.to()`` reallocates buffers, and a load may follow)."""
        first = lambda m: next(iter(m.buffers()), None)  # noqa: E731
        return (id(module), *(t.data_ptr() if t is not None else 0
                              for t in (first(module), first(self.module), next(module.parameters(), None))))

    def _matched(self, module: nn.Module) -> tuple:
        token = self._token(module)
        if self._pairs is None or self._pairs[0] != token:
            # matched by name, not position: a deep copy of e3nn's fx-compiled tensor products
            # holds its constants as extra buffers (`_tensor_constant0`) that the original lacks
            parameters, buffers = dict(self.module.named_parameters()), dict(self.module.named_buffers())
            current_p = [(name, p) for name, p in module.named_parameters()]
            current_b = [(name, b) for name, b in module.named_buffers()]
            self._pairs = (token, [parameters[n] for n, _ in current_p], [p.detach() for _, p in current_p],
                           [buffers[n] for n, _ in current_b], [b for _, b in current_b])
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        if self._host_updates is None:
            self._host_updates = int(self.num_updates)
        n = self._host_updates
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        averaged, current, averaged_buffers, buffers = self._matched(module)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        if averaged_buffers:
            torch._foreach_copy_(averaged_buffers, buffers)
        self.num_updates += 1
        self._host_updates = n + 1
