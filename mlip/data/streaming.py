"""Streaming structures from files without preprocessing, for one pass (evaluation, benchmarks).

`StreamingDataset` reads files through any reader and builds graphs in the
DataLoader workers: worker k of W keeps records k, k + W, ... Each worker parses
the whole stream (formats such as extxyz and JSON cannot be entered in the
middle), so extra workers speed up graph building, not parsing; for repeated
epochs at scale, preprocess into a store instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mlip.data.graph import AtomicGraph, structure_to_graph
from mlip.data.readers import iter_structures


class StreamingDataset(IterableDataset):
    """Graphs of the structures in ``files``, in file order (interleaved across workers).

    Args:
        files: paths read in order with `iter_structures`.
        cutoff: neighbour-list radius (Å); None leaves edges to the device.
        format / reader: reader name and its options.
        fixed_atom_forces: False leaves the forces on fixed atoms out of the labels.
    """

    def __init__(
        self,
        files: str | Path | Sequence[str | Path],
        cutoff: float | None,
        format: str = "auto",
        reader: Mapping[str, Any] | None = None,
        fixed_atom_forces: bool = True,
    ):
        self.files = [files] if isinstance(files, (str, Path)) else list(files)
        self.cutoff, self.format, self.reader = cutoff, format, dict(reader or {})
        self.fixed_atom_forces = fixed_atom_forces

    def __iter__(self) -> Iterator[AtomicGraph]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n = 0
        for path in self.files:
            for structure in iter_structures(path, self.format, **self.reader):
                if n % workers == worker:
                    yield structure_to_graph(structure, self.cutoff, self.fixed_atom_forces)
                n += 1
