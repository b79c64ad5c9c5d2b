"""Tensor products behind one interface, several backends (``tp_backend``).

- ``e3nn``: e3nn's reference implementation (any device);
- ``cueq``: cuequivariance-torch, fused with the gather from senders and the sum at
  receivers, on CUDA (CPU tensors take the e3nn path: cuequivariance's CPU fallback
  fails once its CUDA ops are installed);
- ``auto``: cueq on CUDA when cuequivariance and its CUDA ops
  (``cuequivariance-ops-torch-cu12``/``-cu13``) are installed, else e3nn.

Backends hold no parameters and share one weight layout (e3nn's instruction order),
so a model trained with one runs with the other.

The symmetric contraction (`mlip.nn.symmetric_contraction`) has a cuequivariance
evaluation too (`symmetric_contraction.CueqContraction`: our weights mapped through a
change of basis computed at first use); it is taken with ``tp_backend="cueq"`` only,
until it has been measured on the device.
"""

from mlip.nn.tensor_product.convolution import TP_BACKENDS, ChannelwiseConvolution

__all__ = ["TP_BACKENDS", "ChannelwiseConvolution"]
