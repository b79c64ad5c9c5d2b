"""Where the cuequivariance backend keeps what it derives, between processes.

- `cache_dir`: our folder (``$MLIP_CACHE_DIR`` or ``~/.cache/mlip``): cuequivariance's
  polynomials and our change of basis (`symmetric_contraction`), written atomically.
- `use_kernel_cache`: cuequivariance-ops compiles its ``uniform_1d`` CUDA kernels with
  NVRTC at first use, one per operation, direction and shape class: 30-45 s of a MACE
  training run's first epoch on an H200, in every new process. It keeps them on disk
  only where ``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` names a folder, and its writes are
  not safe against other processes: nine runs started at once on an empty shared folder
  all crashed. So each process gets a private folder, seeded with copies of the shared
  folder's kernels (``cache_dir()/cueq/nvrtc``), and at exit publishes the kernels it
  compiled there, each by a rename: the shared folder only ever holds whole files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

NVRTC_CACHE_VARIABLE = "CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR"


def cache_dir() -> Path:
    """Where derived, rebuildable artefacts are kept (``$MLIP_CACHE_DIR`` or ``~/.cache/mlip``)."""
    return Path(os.environ.get("MLIP_CACHE_DIR") or Path.home() / ".cache" / "mlip")


def _files(folder: Path) -> dict[str, int]:
    """Name -> size of the whole files in ``folder`` (our temporaries excluded)."""
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def seed_private_folder(shared: Path, private: Path) -> None:
    """Copy the shared folder's kernels into this process's folder."""
    for name in _files(shared):
        shutil.copyfile(shared / name, private / name)


def publish_new_kernels(private: Path, shared: Path) -> int:
    """Copy the kernels compiled in ``private`` that ``shared`` lacks into it, each through a
    temporary file and a rename; returns how many."""
    known, published = _files(shared), 0
    for name, size in _files(private).items():
        if known.get(name) == size:
            continue
        partial = shared / f".{name}.{os.getpid()}.partial"
        try:
            shutil.copyfile(private / name, partial)
            os.replace(partial, shared / name)
            published += 1
        finally:
            partial.unlink(missing_ok=True)
    return published


def _publish_and_remove(private: Path, shared: Path) -> None:
    try:
        publish_new_kernels(private, shared)
    except OSError as error:  # a full or read-only disk: the next process compiles again
        warnings.warn(f"could not keep cuequivariance's compiled kernels in {shared}: {error}")
    finally:
        shutil.rmtree(private, ignore_errors=True)


def use_kernel_cache() -> None:
    """Point cuequivariance-ops at a private, seeded kernel folder, published at exit (module
    docstring). Called on import, before cuequivariance's CUDA ops are loaded; a folder the
    user named in ``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` is left alone."""
    if os.environ.get(NVRTC_CACHE_VARIABLE):
        return
    shared = cache_dir() / "cueq" / "nvrtc"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="mlip-nvrtc-"))
        seed_private_folder(shared, private)
    except OSError as error:  # a read-only home: kernels are compiled anew in each process
        warnings.warn(f"cuequivariance's compiled kernels are not kept ({shared}: {error})")
        return
    os.environ[NVRTC_CACHE_VARIABLE] = str(private)
    atexit.register(_publish_and_remove, private, shared)
