"""Write any reader's structures into a sharded HDF5 store, resumably.

Each shard is written to ``shard-k.h5.partial``, flushed to disk and renamed, so a
shard on disk is always whole. A rerun with the same settings keeps the whole
shards it finds (their fingerprint must match), reads past their structures and
writes on; the manifest, with counts, elements, units, source, checksums and the
training-set statistics, is written last, atomically. The bytes of a shard depend
only on its structures, so an interrupted and resumed run ends with the same store
as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mlip.atomic import atomic_write_bytes
from mlip.data.checks import check_overlaps
from mlip.data.graph import neighbour_list
from mlip.data.readers import SkippedRecords, iter_structures
from mlip.data.statistics import TrainingSetSummary, statistics_from_summary
from mlip.data.store.format import FORMAT, MANIFEST, UNITS, fingerprint, sha256_file, shard_name
from mlip.data.structure import DataError, Structure

log = logging.getLogger("mlip.preprocess")


def _shard_arrays(structures: list[Structure], n_edges: list[int]) -> dict[str, np.ndarray]:
    n_atoms = [s.n_atoms for s in structures]
    nan33 = np.full((3, 3), np.nan)
    return {
        "positions": np.concatenate([s.positions for s in structures]),
        "atomic_numbers": np.concatenate([s.atomic_numbers for s in structures]).astype(np.uint8),
        "forces": np.concatenate([s.forces if s.forces is not None else np.zeros((s.n_atoms, 3)) for s in structures]),
        "tags": np.concatenate([s.tags if s.tags is not None else np.zeros(s.n_atoms, np.int64) for s in structures]),
        "fixed": np.concatenate([s.fixed if s.fixed is not None else np.zeros(s.n_atoms, bool) for s in structures]),
        "atom_offsets": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        "cell": np.stack([s.cell for s in structures]),
        "pbc": np.stack([s.pbc for s in structures]),
        "energy": np.array([np.nan if s.energy is None else s.energy for s in structures]),
        "stress": np.stack([s.stress if s.stress is not None else nan33 for s in structures]),
        "has_forces": np.array([s.forces is not None for s in structures]),
        "n_edges": np.array(n_edges, dtype=np.int64),
        "force_sq_sum": np.array([0.0 if s.forces is None else float(np.sum(s.forces**2)) for s in structures]),
        "source": np.array([s.source for s in structures], dtype=object),
    }


def shard_summary(arrays: Mapping[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> TrainingSetSummary:
    """The `TrainingSetSummary` of (some rows of) one shard's arrays."""
    offsets = arrays["atom_offsets"]
    index = np.arange(len(offsets) - 1)[rows]
    atom_rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in index]) if len(index) else np.zeros(0, int)
    sizes = offsets[index + 1] - offsets[index]
    return TrainingSetSummary.from_arrays(
        arrays["atomic_numbers"][atom_rows],
        np.concatenate([[0], np.cumsum(sizes)]),
        arrays["energy"][index],
        arrays["force_sq_sum"][index],
        np.where(arrays["has_forces"][index], 3 * sizes, 0),
        arrays["n_edges"][index],
    )


def write_shard(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write one shard atomically (``.partial`` then rename); fixed bytes for fixed input."""
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "w", track_order=True, libver=("earliest", "v110")) as h5:
        for name, value in arrays.items():
            if value.dtype == object:
                h5.create_dataset(name, data=value.astype(str).tolist(), dtype=h5py.string_dtype(), track_times=False)
            else:
                h5.create_dataset(name, data=value, track_times=False)
        for key, value in attrs.items():
            h5.attrs[key] = value
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _complete_shards(output: Path, settings_hash: str) -> list[Path]:
    """The whole shards already in ``output`` from a run with the same settings, in order."""
    for stale in output.glob("*.partial"):
        stale.unlink()
    shards = []
    while (path := output / shard_name(len(shards))).is_file():
        try:
            with h5py.File(path, "r") as h5:
                theirs = h5.attrs["fingerprint"]
        except (OSError, KeyError) as exc:
            raise DataError(f"{path}: unreadable shard in the output folder ({exc}); remove it to rewrite it") from exc
        if theirs != settings_hash:
            raise DataError(
                f"{output}: holds shards from different preprocessing settings; "
                f"remove the folder or write to another one"
            )
        shards.append(path)
    return shards


def _geometry_checked(structures: Iterable[Structure], cutoff: float, on_error: str,
                      skipped: SkippedRecords) -> Iterator[tuple[Structure, int]]:
    """(structure, its edge count at ``cutoff``) for the structures that pass `mlip.data.checks`
    (overlapping atoms); the others raise or are skipped. One neighbour list serves both."""
    for s in structures:
        edge_index, shifts = neighbour_list(s.positions, s.cell, s.pbc, cutoff)
        try:
            check_overlaps(s.source, s.positions, s.cell, edge_index, shifts)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.add(str(exc))
            continue
        yield s, edge_index.shape[1]


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def write_store(
    inputs: str | Path | list[str | Path],
    output: str | Path,
    cutoff: float,
    shard_size: int = 10_000,
    format: str = "auto",
    reader: Mapping[str, Any] | None = None,
    on_error: str = "raise",
    e0s: str | Mapping = "least_squares",
    energy_reference: str = "total",
) -> dict[str, Any]:
    """Convert the structures of ``inputs`` into a store in ``output``; returns the manifest.

    Args:
        inputs: files (or LMDB folders) read in order with `iter_structures`.
        cutoff: Å; neighbour counts at this radius feed the edge budget and ``avg_num_neighbors``.
        shard_size: structures per shard.
        format / reader: reader name (``"auto"``: by file name) and its options.
        on_error: ``"raise"`` or ``"skip"`` bad records (counted in the manifest).
        e0s: as for `statistics_from_summary`; the statistics are those of the whole store.
        energy_reference: ``"total"`` or ``"adsorption"`` (OC20), recorded for the model's users.
    """
    if energy_reference == "adsorption" and e0s != "zero":
        raise DataError("adsorption energies are referenced already and are not sums of per-element energies; use e0s=zero")
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    output = Path(output)
    reader = dict(reader or {})
    settings = {
        "inputs": [str(p.resolve()) for p in inputs],
        "format": format,
        "reader": reader,
        "on_error": on_error,
        "cutoff": float(cutoff),
        "shard_size": int(shard_size),
    }
    settings_hash = fingerprint(settings)
    if (output / MANIFEST).is_file():
        manifest = json.loads((output / MANIFEST).read_text())
        if manifest.get("fingerprint") == settings_hash:
            log.info("%s is already complete", output)
            return manifest
        raise DataError(f"{output}: holds a complete store from different settings; choose another folder")
    output.mkdir(parents=True, exist_ok=True)
    done = _complete_shards(output, settings_hash)
    if done:
        log.info("resuming: %d whole shard(s) already in %s", len(done), output)

    skipped = SkippedRecords()
    structures = (s for path in inputs for s in iter_structures(path, format, on_error=on_error, skipped=skipped, **reader))
    checked = _geometry_checked(structures, cutoff, on_error, skipped)
    started = time.perf_counter()
    shard_records, summary = [], None
    for k, batch in enumerate(_batches(checked, shard_size)):
        path = output / shard_name(k)
        if k < len(done):  # read past the structures of a whole shard
            with h5py.File(path, "r") as h5:
                n_stored, shard_sum = int(h5.attrs["n_structures"]), json.loads(h5.attrs["summary"])
            if n_stored != len(batch):
                raise DataError(f"{path}: holds {n_stored} structures but the input gives {len(batch)}; inputs changed?")
            shard = TrainingSetSummary.from_dict(shard_sum)
        else:
            arrays = _shard_arrays([s for s, _ in batch], [n for _, n in batch])
            shard = shard_summary(arrays)
            attrs = {
                "format": FORMAT,
                "fingerprint": settings_hash,
                "first_index": k * shard_size,
                "n_structures": len(batch),
                "n_atoms": int(arrays["atom_offsets"][-1]),
                "summary": json.dumps(shard.to_dict()),
            }
            write_shard(path, arrays, attrs)
            log.info("wrote %s (%d structures, %.0f structures/s)", path.name, len(batch),
                     (k + 1 - len(done)) * shard_size / (time.perf_counter() - started))
        summary = shard if summary is None else summary + shard
        shard_records.append({"file": path.name, "n_structures": len(batch), "sha256": sha256_file(path)})
    if summary is None:
        raise DataError(f"{', '.join(map(str, inputs))}: no structures to store" + (f"; {skipped.summary()}" if skipped.count else ""))
    if len(shard_records) < len(done):
        raise DataError(f"{output}: holds more shards than the input fills; inputs changed?")

    statistics = statistics_from_summary(summary, e0s)
    manifest = {
        "format": FORMAT,
        "fingerprint": settings_hash,
        "settings": settings,
        "n_structures": sum(r["n_structures"] for r in shard_records),
        "n_atoms": summary.n_atoms,
        "elements": statistics.elements,
        "units": UNITS,
        "energy_reference": energy_reference,
        "skipped": {"count": skipped.count, "reasons": skipped.reasons},
        "shards": shard_records,
        "statistics": {**statistics.to_dict(), "e0s_method": e0s if isinstance(e0s, str) else dict(e0s), "cutoff": float(cutoff)},
        "summary": summary.to_dict(),
    }
    atomic_write_bytes(output / MANIFEST, json.dumps(manifest, indent=1).encode())
    if skipped.count:
        log.warning("%s", skipped.summary())
    return manifest
