"""Which tensor-product backend serves a call (``tp_backend``: auto | e3nn | cueq), and where
the cuequivariance backend keeps what it derives (`cache_dir`, `use_kernel_cache`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

# cp: CP-decomposed convolution (`cp.CPConvolution`); grid: Gaunt product on a sphere grid
# (`grid.GridConvolution`); both serve the edge convolution only
TP_BACKENDS = ("auto", "e3nn", "cueq", "cp", "grid")
CUEQ = importlib.util.find_spec("cuequivariance_torch") is not None
# cuequivariance's CUDA kernels come in a separate package; without it "auto" stays with e3nn
CUEQ_CUDA_OPS = importlib.util.find_spec("cuequivariance_ops_torch") is not None
NVRTC_CACHE_VARIABLE = "CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR"


def cache_dir() -> Path:
    """Where derived, rebuildable artefacts are kept (``$MLIP_CACHE_DIR`` or ``~/.cache/mlip``)."""
    return Path(os.environ.get("MLIP_CACHE_DIR") or Path.home() / ".cache" / "mlip")


def use_kernel_cache() -> None:
    """Keep cuequivariance's compiled CUDA kernels on disk, in ``cache_dir()/cueq/nvrtc``.

    cuequivariance-ops compiles its ``uniform_1d`` kernels with NVRTC at first use, one per
    operation, direction and shape class: 30-45 s of a MACE training run's first epoch on an
    H200, in every new process. It keeps them on disk only where
    ``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` names a folder; a value the user set is left alone.
    Called on import, before cuequivariance is loaded.
    """
    if os.environ.get(NVRTC_CACHE_VARIABLE):
        return
    folder = cache_dir() / "cueq" / "nvrtc"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: kernels are compiled anew in each process
        return
    os.environ[NVRTC_CACHE_VARIABLE] = str(folder)


use_kernel_cache()


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
