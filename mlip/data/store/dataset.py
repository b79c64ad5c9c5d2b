"""Random access to a packed store: a map-style Dataset of `AtomicGraph`.

The shards' numeric arrays are contiguous and uncompressed, so they are read as
NumPy memory maps at the byte offsets HDF5 reports: taking one structure is a
slice of the page cache, not a round of HDF5 calls (that made reading the store
slower than re-parsing the source files). Maps and HDF5 handles are opened lazily
in each process that reads (DataLoader workers, DDP ranks) and never shared across
a fork. The per-structure sizes (atoms, edges) are loaded once, for the budget sampler.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from mlip.data.graph import AtomicGraph, make_graph
from mlip.data.statistics import DatasetStatistics, TrainingSetSummary
from mlip.data.store.format import PER_ATOM, PER_STRUCTURE, read_manifest, sha256_file
from mlip.data.store.writer import shard_summary
from mlip.data.structure import DataError


class StoreDataset(Dataset):
    """The structures of a store as graphs, by global index.

    Args:
        path: the store folder (with its ``manifest.json``).
        cutoff: neighbour-list radius (Å) for edges built here; None leaves the edges
            to `add_batch_edges` on the device.
        fixed_atom_forces: False leaves the forces on fixed atoms out of the labels.
        verify: check every shard's SHA-256 against the manifest first.
    """

    def __init__(self, path: str | Path, cutoff: float | None, fixed_atom_forces: bool = True, verify: bool = False):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.cutoff = cutoff
        self.fixed_atom_forces = fixed_atom_forces
        try:
            self._open(verify)
        except DataError:
            raise
        except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:  # h5py and a damaged manifest
            raise DataError(f"{self.path}: damaged store ({type(exc).__name__}: {str(exc)[:200]})") from None
        self._handles: dict[int, h5py.File] = {}
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._pid = os.getpid()

    def _open(self, verify: bool) -> None:
        """Read the shards' index arrays and check them against the manifest (counts, offsets)."""
        self.files = [self.path / shard["file"] for shard in self.manifest["shards"]]
        if verify:
            verify_store(self.path)
        counts = [int(shard["n_structures"]) for shard in self.manifest["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        atoms, edges, self._offsets = [], [], []
        for file, count in zip(self.files, counts):
            with h5py.File(file, "r") as h5:
                offsets = h5["atom_offsets"][:]
                n_positions = h5["positions"].shape[0]
                if len(offsets) != count + 1 or offsets[0] != 0 or (np.diff(offsets) < 1).any() \
                        or offsets[-1] != n_positions or len(h5["n_edges"]) != count:
                    raise DataError(f"{file}: its index does not match the manifest ({count} structures, "
                                    f"{len(offsets) - 1} offsets over {n_positions} atoms): damaged shard")
                atoms.append(np.diff(offsets))
                edges.append(h5["n_edges"][:])
                self._offsets.append(offsets)
        self.n_atoms = np.concatenate(atoms) if atoms else np.zeros(0, dtype=np.int64)
        self.n_edges = np.concatenate(edges) if edges else np.zeros(0, dtype=np.int64)

    @property
    def store_cutoff(self) -> float:
        """The radius (Å) at which ``n_edges`` were counted."""
        return float(self.manifest["settings"]["cutoff"])

    def statistics(self) -> DatasetStatistics:
        """The training-set statistics written at preprocess time (of the whole store)."""
        stored = self.manifest["statistics"]
        return DatasetStatistics(**{k: stored[k] for k in DatasetStatistics.__dataclass_fields__})

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_arrays"] = {}, {}
        return state

    def _shard(self, k: int) -> h5py.File:
        if os.getpid() != self._pid:  # a forked worker: never reuse the parent's handles
            self._handles, self._arrays, self._pid = {}, {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = h5py.File(self.files[k], "r")
        return self._handles[k]

    def _mapped(self, k: int) -> dict[str, np.ndarray]:
        """The numeric arrays of shard ``k``, memory-mapped where HDF5 stores them contiguously."""
        h5 = self._shard(k)
        if k not in self._arrays:
            arrays = {}
            for name in (*PER_ATOM, *(n for n in PER_STRUCTURE if n != "source")):
                dataset = h5[name]
                offset = dataset.id.get_offset()
                if offset is None or dataset.chunks is not None or dataset.compression is not None:
                    arrays[name] = dataset[()]
                else:
                    arrays[name] = np.memmap(self.files[k], mode="r", dtype=dataset.dtype, shape=dataset.shape, offset=offset)
            self._arrays[k] = arrays
        return self._arrays[k]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row) of a global structure index."""
        if not 0 <= index < len(self):
            raise IndexError(f"structure {index} is outside the store's {len(self)}")
        k = int(np.searchsorted(self.starts, index, side="right") - 1)
        return k, int(index - self.starts[k])

    def __getitem__(self, index: int) -> AtomicGraph:
        try:
            return self._graph(int(index))
        except (DataError, IndexError):
            raise
        except (OSError, KeyError, TypeError, ValueError) as exc:  # a shard damaged after it was opened
            raise DataError(f"{self.path}#{index}: damaged record ({type(exc).__name__}: {str(exc)[:200]})") from None

    def _graph(self, index: int) -> AtomicGraph:
        k, row = self.locate(index)
        arrays = self._mapped(k)
        a, b = self._offsets[k][row], self._offsets[k][row + 1]
        energy = float(arrays["energy"][row])
        stress = np.array(arrays["stress"][row])
        return make_graph(
            positions=np.array(arrays["positions"][a:b]),
            atomic_numbers=np.array(arrays["atomic_numbers"][a:b]),
            cell=np.array(arrays["cell"][row]),
            pbc=np.array(arrays["pbc"][row]),
            energy=None if np.isnan(energy) else energy,
            forces=np.array(arrays["forces"][a:b]) if arrays["has_forces"][row] else None,
            stress=None if np.isnan(stress).any() else stress,
            tags=np.array(arrays["tags"][a:b]),
            fixed=np.array(arrays["fixed"][a:b]),
            cutoff=self.cutoff,
            fixed_atom_forces=self.fixed_atom_forces,
        )

    def source(self, index: int) -> str:
        """Where structure ``index`` was read from (``file#record``)."""
        k, row = self.locate(index)
        return self._shard(k)["source"][row].decode()

    def labels(self) -> dict[str, np.ndarray]:
        """[S] bool arrays has_energy, has_forces, has_stress and periodic (in all three directions)."""
        parts: dict[str, list[np.ndarray]] = {"has_energy": [], "has_forces": [], "has_stress": [], "periodic": []}
        for k in range(len(self.files)):
            h5 = self._shard(k)
            parts["has_energy"].append(np.isfinite(h5["energy"][:]))
            parts["has_forces"].append(h5["has_forces"][:])
            parts["has_stress"].append(np.isfinite(h5["stress"][:]).all(axis=(1, 2)))
            parts["periodic"].append(h5["pbc"][:].all(axis=1))
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def summary(self, indices: Sequence[int] | None = None) -> TrainingSetSummary:
        """Training-set summary of all structures (from the manifest) or of ``indices`` (recomputed)."""
        if indices is None:
            return TrainingSetSummary.from_dict(self.manifest["summary"])
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        total = None
        for k in np.unique(np.searchsorted(self.starts, indices, side="right") - 1):
            rows = indices[(indices >= self.starts[k]) & (indices < self.starts[k + 1])] - self.starts[k]
            h5 = self._shard(int(k))
            arrays = {n: h5[n][:] for n in ("atom_offsets", "atomic_numbers", "energy", "force_sq_sum", "has_forces", "n_edges")}
            part = shard_summary(arrays, rows)
            total = part if total is None else total + part
        if total is None:
            raise DataError(f"{self.path}: no structures selected")
        return total


def verify_store(path: str | Path) -> None:
    """Raise `DataError` naming the first shard whose SHA-256 differs from the manifest."""
    path = Path(path)
    for shard in read_manifest(path)["shards"]:
        file = path / shard["file"]
        if not file.is_file():
            raise DataError(f"{file}: shard listed in the manifest is missing")
        if sha256_file(file) != shard["sha256"]:
            raise DataError(f"{file}: checksum differs from the manifest; the shard is damaged")

