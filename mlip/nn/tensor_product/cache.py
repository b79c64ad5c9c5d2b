"""Where the cuequivariance backend keeps what it derives, between processes.

- `cache_dir`: our folder (``$MLIP_CACHE_DIR`` or ``~/.cache/mlip``): cuequivariance's
  polynomials and our change of basis (`mlip.nn.symmetric_contraction.cueq_executor`),
  written atomically.
- `use_kernel_cache`: cuequivariance-ops compiles its ``uniform_1d`` CUDA kernels with
  NVRTC at first use, one per operation, direction and shape class: 30-45 s of a MACE
  training run's first epoch on an H200, in every new process. It keeps them on disk
  only where ``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` names a folder. Each process works in
  a private folder, seeded with copies of our shared folder's kernels
  (``cache_dir()/cueq/nvrtc``), and at exit publishes the kernels it compiled there, each
  through a temporary file and a rename: the shared folder only ever holds whole files,
  and no two processes write one file at once. Why: nine cueq training runs started at
  once on one empty shared folder once all crashed in native code (H200,
  cuequivariance-ops 0.13). A later check did not reproduce that (six processes on one
  empty shared folder finished), but there six cold processes took 43-45 s each with
  private folders against 79.5 s with the shared one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

NVRTC_CACHE_VARIABLE = "CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR"
# set beside it to the private folder we chose: a child process (a DDP rank, a benchmark's
# run) inherits both and must not write into its parent's folder, but a folder the user
# chose is theirs to share
OURS_VARIABLE = "MLIP_PRIVATE_NVRTC_CACHE_DIR"
_folders: tuple[Path, Path] | None = None  # (private, shared) of this process, once set up


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


def publish_kernels() -> int:
    """Publish the kernels this process compiled so far (at exit this happens by itself): for
    processes started by this one that should find them. Returns how many were new."""
    if _folders is None:
        return 0
    private, shared = _folders
    try:
        return publish_new_kernels(private, shared)
    except OSError as error:  # a full or read-only disk: the next process compiles again
        warnings.warn(f"could not keep cuequivariance's compiled kernels in {shared}: {error}")
        return 0


def _publish_and_remove() -> None:
    try:
        publish_kernels()
    finally:
        if _folders is not None:
            shutil.rmtree(_folders[0], ignore_errors=True)


def use_kernel_cache() -> None:
    """Point cuequivariance-ops at a private, seeded kernel folder, published at exit (module
    docstring). Called on import, before cuequivariance's CUDA ops are loaded; a folder the
    user named in ``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` is left alone."""
    global _folders
    chosen = os.environ.get(NVRTC_CACHE_VARIABLE)
    if _folders is not None or (chosen and chosen != os.environ.get(OURS_VARIABLE)):
        return
    shared = cache_dir() / "cueq" / "nvrtc"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="mlip-nvrtc-"))
        seed_private_folder(shared, private)
    except OSError as error:  # a read-only home: kernels are compiled anew in each process
        warnings.warn(f"cuequivariance's compiled kernels are not kept ({shared}: {error})")
        if chosen:  # not into a parent's private folder either
            del os.environ[NVRTC_CACHE_VARIABLE]
        return
    _folders = (private, shared)
    os.environ[NVRTC_CACHE_VARIABLE] = os.environ[OURS_VARIABLE] = str(private)
    atexit.register(_publish_and_remove)
