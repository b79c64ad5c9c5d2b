"""LightningDataModule: read files, split, build graphs, compute statistics, batch.

Splits are either by file (``val_files`` / ``test_files``) or drawn from the
training files by seed (``val_fraction`` / ``test_fraction``). Statistics always
come from the training split only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Sampler
from torch_geometric.loader import DataLoader

from mlip.data.graph import AtomicGraph, structure_to_graph
from mlip.data.readers.extxyz import read_extxyz
from mlip.data.statistics import DatasetStatistics, compute_statistics
from mlip.data.structure import DataError, Structure


def _as_list(files: str | Path | Sequence[str] | None) -> list[str]:
    if files is None:
        return []
    return [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch): the same order after a resume at that epoch."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def split_by_seed(
    structures: Sequence[Structure], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Structure], list[Structure], list[Structure]]:
    """Random train/val/test split of ``structures`` (each non-empty split has at least one structure)."""
    n = len(structures)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = int(round(test_fraction * n)) if test_fraction > 0 else 0
    n_val, n_test = max(n_val, int(val_fraction > 0)), max(n_test, int(test_fraction > 0))
    if n_val + n_test >= n:
        raise DataError(f"cannot split {n} structures into val={val_fraction}, test={test_fraction} and a training set")
    val = [structures[k] for k in order[:n_val]]
    test = [structures[k] for k in order[n_val : n_val + n_test]]
    train = [structures[k] for k in order[n_val + n_test :]]
    return train, val, test


class AtomicDataModule(L.LightningDataModule):
    """Structures from extxyz files as batches of `AtomicGraph`.

    Args:
        train_files: extxyz file(s) of the training data.
        r_max: neighbour-list cutoff, Å (the model's cutoff).
        val_files / test_files: explicit validation / test files; when absent, drawn from
            the training files with ``val_fraction`` / ``test_fraction`` and ``split_seed``.
        energy_key, forces_key, stress_key, virial_key: label names in the files.
        e0s: ``"least_squares"``, a mapping element -> eV, or an isolated-atom extxyz path.
        elements: atomic numbers for the model (default: those in the training set).
        batch_size / val_batch_size: structures per batch.
        num_workers: DataLoader workers.
        seed: shuffling seed (per epoch).
    """

    def __init__(
        self,
        train_files: str | Sequence[str],
        r_max: float,
        val_files: str | Sequence[str] | None = None,
        test_files: str | Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        stress_key: str | None = "stress",
        virial_key: str | None = "virial",
        e0s: str | Mapping = "least_squares",
        elements: Sequence[int] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.train_files, self.val_files, self.test_files = _as_list(train_files), _as_list(val_files), _as_list(test_files)
        self.r_max = float(r_max)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, virial_key=virial_key)
        self.e0s = e0s
        self.elements = list(elements) if elements is not None else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, list[Structure]] = {}
        self.graphs: dict[str, list[AtomicGraph]] = {}
        self.statistics: DatasetStatistics | None = None

    def _read(self, files: Sequence[str]) -> list[Structure]:
        return [s for f in files for s in read_extxyz(f, **self.keys)]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        structures = self._read(self.train_files)
        if self.val_files or self.test_files:
            train = structures
            val, test = self._read(self.val_files), self._read(self.test_files)
            if not self.val_files:
                train, val, _ = split_by_seed(train, self.val_fraction, 0.0, self.split_seed)
        else:
            train, val, test = split_by_seed(structures, self.val_fraction, self.test_fraction, self.split_seed)
        self.splits = {"train": train, "val": val, "test": test}
        self.graphs = {name: [structure_to_graph(s, self.r_max) for s in split] for name, split in self.splits.items()}
        self.statistics = compute_statistics(train, self.graphs["train"], self.e0s, self.elements)

    def require_labels(self, energy: bool, forces: bool, stress: bool) -> None:
        """Raise `DataError` naming the first training/validation record that lacks a requested label.

        Stress is required only of structures periodic in all three directions.
        """
        for split in ("train", "val"):
            for s in self.splits[split]:
                missing = [
                    name
                    for name, wanted, present in (
                        ("energy", energy, s.energy is not None),
                        ("forces", forces, s.forces is not None),
                        ("stress", stress and s.is_periodic, s.stress is not None),
                    )
                    if wanted and not present
                ]
                if missing:
                    raise DataError(
                        f"{s.source}: no {', '.join(missing)} label, but the loss asks for it; "
                        f"set the label key in the data config or give that loss term weight 0"
                    )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochShuffleSampler(len(self.graphs["train"]), self.seed)
        return DataLoader(self.graphs["train"], batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.graphs["val"], batch_size=self.val_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.graphs["test"], batch_size=self.val_batch_size, num_workers=self.num_workers)
