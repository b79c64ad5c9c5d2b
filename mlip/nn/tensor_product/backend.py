"""Which tensor-product backend serves a call (``tp_backend``: auto | e3nn | cueq)."""

from __future__ import annotations

import importlib.util

import torch

from mlip.nn.tensor_product.cache import use_kernel_cache

# cp: CP-decomposed convolution (`cp.CPConvolution`); grid: Gaunt product on a sphere grid
# (`grid.GridConvolution`); both serve the edge convolution only
TP_BACKENDS = ("auto", "e3nn", "cueq", "cp", "grid")
CUEQ = importlib.util.find_spec("cuequivariance_torch") is not None
# cuequivariance's CUDA kernels come in a separate package; without it "auto" stays with e3nn
CUEQ_CUDA_OPS = importlib.util.find_spec("cuequivariance_ops_torch") is not None
if CUEQ_CUDA_OPS:
    use_kernel_cache()  # before cuequivariance's CUDA ops are loaded


def check_backend(backend: str) -> str:
    """``backend`` if it is known and installed, else a clear error."""
    if backend not in TP_BACKENDS:
        raise ValueError(f"tp_backend must be one of {TP_BACKENDS}, got {backend!r}")
    if backend == "cueq" and not CUEQ:
        raise ImportError("tp_backend=cueq needs cuequivariance-torch (pip install cuequivariance-torch)")
    return backend


def uses_cueq(backend: str, x: torch.Tensor) -> bool:
    """Whether a call on ``x`` takes the cuequivariance path.

    CPU tensors always take the e3nn path: cuequivariance's CPU fallback stops working
    once its CUDA ops are installed (a CUDA-only transpose op). ``auto`` takes
    cuequivariance on CUDA when its CUDA ops are installed.
    """
    if not CUEQ or not x.is_cuda:
        return False
    return backend == "cueq" or (backend == "auto" and CUEQ_CUDA_OPS)
