"""Tensor products behind one interface, several backends (``tp_backend``).

- ``e3nn``: e3nn's reference implementation (any device);
- ``cueq``: cuequivariance-torch on CUDA: the channel-wise tensor product fused with
  the gather from senders and the sum at receivers (`convolution`); the symmetric
  contraction reads the same setting (`mlip.nn.symmetric_contraction.cueq_executor`).
  CPU tensors take the e3nn path;
- ``auto``: cueq on CUDA when cuequivariance and its CUDA ops
  (``cuequivariance-ops-torch-cu12``/``-cu13``) are installed, else e3nn;
- ``cp`` (`cp.CPConvolution`, TDN) and ``grid`` (`grid.GridConvolution`, the Gaunt
  product on a sphere grid) replace the edge convolution only, with their own weight
  layouts; the symmetric contraction of a model built with them runs ``auto``.

Backends hold no parameters and share one weight layout (e3nn's instruction order and
our symmetric basis), so a model trained with one runs with the other.
"""

from mlip.nn.tensor_product.backend import TP_BACKENDS, check_backend, uses_cueq
from mlip.nn.tensor_product.convolution import ChannelwiseConvolution

__all__ = ["TP_BACKENDS", "ChannelwiseConvolution", "check_backend", "uses_cueq"]
