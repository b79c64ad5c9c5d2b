"""The packed store's on-disk layout, shared by its writer and its reader.

A store is a folder::

    manifest.json          written last: its presence means the store is complete
    shard-00000.h5         structures 0 .. N-1
    shard-00001.h5         structures N .. 2N-1, ...

Each shard is an HDF5 file of contiguous arrays, per atom (A rows) and per
structure (S rows):

    positions [A, 3] f8 Å     atomic_numbers [A] u1    forces [A, 3] f8 eV/Å (zeros if absent)
    tags [A] i8               fixed [A] bool
    atom_offsets [S + 1] i8   cell [S, 3, 3] f8 Å      pbc [S, 3] bool
    energy [S] f8 eV (NaN: none)   stress [S, 3, 3] f8 eV/Å³ (NaN: none)   has_forces [S] bool
    n_edges [S] i8 (edges at the store's cutoff)   force_sq_sum [S] f8   source [S] str

and attributes ``format``, ``fingerprint`` (of the preprocessing settings),
``first_index``, ``n_structures``, ``n_atoms`` and ``summary`` (the shard's
`TrainingSetSummary` as JSON). Units are those of `Structure`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FORMAT = "mlip-store/1"
MANIFEST = "manifest.json"
PER_ATOM = ("positions", "atomic_numbers", "forces", "tags", "fixed")
PER_STRUCTURE = ("cell", "pbc", "energy", "stress", "has_forces", "n_edges", "force_sq_sum", "source")
UNITS = {"positions": "Å", "cell": "Å", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³ (ASE sign)"}


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.h5"


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of the settings that determine a store's content."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(store: str | Path) -> dict[str, Any]:
    from mlip.data.structure import DataError

    path = Path(store) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{store}: not a complete mlip store (no {MANIFEST}); run mlip-preprocess, "
            f"which resumes an interrupted run in the same folder"
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: damaged manifest (not JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path}: format {found!r}, expected {FORMAT!r}")
    return manifest
