"""LightningDataModules: structures in memory (`AtomicDataModule`) or a packed store (`StoreDataModule`).

Both share `GraphDataModule`: batches of a fixed number of structures or filled to
an atom/edge budget, shuffled by (seed, epoch), dealt out across data-parallel
ranks by the samplers themselves (the trainer runs with
``use_distributed_sampler=False``), and neighbour lists built either before
batching on the CPU (``neighbour_list="workers"``) or for the whole batch on its
device after the transfer (``"device"``, vesin-torch). Statistics always come
from the training split only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler, Subset
from torch_geometric.data import Batch

from mlip.data.loader import GraphLoader, batch_to_device
from mlip.data.checks import unknown_elements
from mlip.data.graph import add_batch_edges, structure_to_graph
from mlip.data.readers import SkippedRecords, iter_structures
from mlip.data.readers.atoms import DEFAULT_KEYS, missing_labels_message
from mlip.data.samplers import BudgetBatchSampler, EpochShuffleSampler, PackedBatchSampler, ResumableBatchSampler
from mlip.data.statistics import DatasetStatistics, TrainingSetSummary, statistics_from_summary
from mlip.data.store.dataset import StoreDataset
from mlip.data.structure import DataError, Structure

log = logging.getLogger("mlip.data")
NEIGHBOUR_LISTS = ("workers", "device")
ENERGY_REFERENCES = ("total", "adsorption")


def _as_list(files: str | Path | Sequence[str] | None) -> list[str]:
    if files is None:
        return []
    return [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Random disjoint train/val/test indices of ``range(n)`` (a non-empty split has at least one)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(int(round(val_fraction * n)), int(val_fraction > 0)) if val_fraction > 0 else 0
    n_test = max(int(round(test_fraction * n)), int(test_fraction > 0)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise DataError(f"cannot split {n} structures into val={val_fraction}, test={test_fraction} and a training set")
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def split_by_seed(
    structures: Sequence[Any], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """`split_indices` applied to a sequence."""
    return tuple([structures[k] for k in part] for part in split_indices(len(structures), val_fraction, test_fraction, seed))


class GraphDataModule(L.LightningDataModule):
    """Batching shared by the data modules; subclasses fill ``datasets``, ``sizes`` and ``statistics``.

    Args:
        r_max: neighbour-list cutoff, Å (the model's cutoff).
        batch_size / val_batch_size: structures per batch (when no budget is set).
        max_atoms / max_edges: fill training batches up to this many atoms / edges instead.
        max_structures: with ``packed``, at most this many structures a batch.
        packed: batches packed to one budget of atoms, edges and structures together
            (`mlip.data.samplers.PackedBatchSampler`), so that padded to it every batch has one
            shape and a CUDA-graphed epoch replays one captured step (validation and test: one
            more). The budget is ``max_atoms`` / ``max_edges`` / ``max_structures`` where given;
            where not, it is chosen from the stored sizes so that a batch holds ``batch_size``
            (``val_batch_size``) structures on average, and never less than the largest
            structure. A training structure larger than a given budget is refused by name.
            None: packed when the trainer runs on CUDA.
        neighbour_list: ``"workers"`` (CPU, vesin, before batching) or ``"device"``
            (vesin-torch on the batch's device).
        num_workers: DataLoader worker processes (None: two when the trainer runs on CUDA, where
            collating in the training process delays every step, none otherwise).
        pin_memory: batches in page-locked memory, so their copies to the GPU run asynchronously
            (None: when the trainer runs on CUDA).
        seed: shuffling seed (per epoch).
        e0s: ``"least_squares"``, ``"zero"``, a mapping element -> eV or an isolated-atom extxyz.
        elements: atomic numbers for the model (default: those in the training set).
        energy_reference: ``"total"`` energies, or ``"adsorption"`` energies already
            referenced to a clean slab and gas-phase molecules (OC20), which are not sums
            of per-element terms: these need ``e0s: zero``.
        fixed_atom_forces: False leaves the (constraint) forces on fixed atoms out of loss and metrics.
    """

    def __init__(
        self,
        r_max: float,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        max_structures: int | None = None,
        packed: bool | None = None,
        neighbour_list: str = "workers",
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
        e0s: str | Mapping | None = "least_squares",
        elements: Sequence[int] | None = None,
        energy_reference: str = "total",
        fixed_atom_forces: bool = True,
    ):
        super().__init__()
        if neighbour_list not in NEIGHBOUR_LISTS:
            raise ValueError(f"neighbour_list must be one of {NEIGHBOUR_LISTS}, got {neighbour_list!r}")
        if energy_reference not in ENERGY_REFERENCES:
            raise ValueError(f"energy_reference must be one of {ENERGY_REFERENCES}, got {energy_reference!r}")
        if energy_reference == "adsorption" and e0s not in ("zero", None):
            raise DataError(
                "adsorption energies are referenced already and are not sums of per-element energies; "
                "set e0s: zero for this dataset"
            )
        if max_atoms is not None and max_edges is not None and packed is False:
            raise ValueError("give max_atoms or max_edges, not both (or packed: true, which packs to both)")
        self.r_max = float(r_max)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.max_atoms, self.max_edges, self.max_structures = max_atoms, max_edges, max_structures
        self.packed = packed
        self.neighbour_list = neighbour_list
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.e0s = e0s
        self.elements = list(elements) if elements is not None else None
        self.energy_reference = energy_reference
        self.fixed_atom_forces = fixed_atom_forces
        self.datasets: dict[str, Dataset] = {}
        self.sizes: dict[str, dict[str, np.ndarray]] = {}
        self.statistics: DatasetStatistics | None = None

    @property
    def graph_cutoff(self) -> float | None:
        """The cutoff graphs are built with before batching (None: edges come on the device)."""
        return self.r_max if self.neighbour_list == "workers" else None

    # ---- what subclasses provide --------------------------------------------------------
    def label_table(self, split: str) -> tuple[dict[str, np.ndarray], Any]:
        """([S] bool arrays has_energy/has_forces/has_stress, a function index -> source name)."""
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------
    def split_size(self, split: str) -> int:
        return len(self.datasets[split])

    def require_labels(self, energy: bool, forces: bool, stress: bool) -> None:
        """Raise `DataError` naming the first training/validation record that lacks a requested label.

        Stress is required only of structures periodic in all three directions.
        """
        for split in ("train", "val"):
            if split not in self.datasets:
                continue
            table, source = self.label_table(split)
            for name, wanted in (("energy", energy), ("forces", forces), ("stress", stress)):
                if not wanted:
                    continue
                missing = ~table[f"has_{name}"]
                if name == "stress":
                    missing &= table["periodic"]
                if missing.any():
                    raise DataError(
                        f"{source(int(np.argmax(missing)))}: no {name} label ({int(missing.sum())} such "
                        f"in {split}), but the loss asks for it; set the label key in the data config "
                        f"or give that loss term weight 0"
                    )

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def packs(self) -> bool:
        """Whether batches are packed to one budget (``packed``; None: on a CUDA trainer, or when
        both ``max_atoms`` and ``max_edges`` are given)."""
        if self.packed is not None:
            return bool(self.packed)
        if self.max_atoms is not None and self.max_edges is not None:
            return True
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def batch_budget(self, split: str) -> tuple[int, int, int] | None:
        """(atoms, edges, structures) the batches of ``split`` are packed to; None when not packed.

        Training batches use ``max_atoms`` / ``max_edges`` / ``max_structures`` where given;
        validation and test share one budget (one evaluation shape), grown where needed to hold
        their largest structure. What is not given comes from the training set's sizes: a batch
        of ``batch_size`` (``val_batch_size``) structures of mean size, the edges with the room for
        the spread of edges per atom that pads the fewest edges over an epoch, and room for
        twice as many structures (small cells fill the atoms)."""
        if not self.packs() or "train" not in self.sizes:
            return None
        train = self.sizes["train"]
        mean_atoms, mean_edges = float(train["atoms"].mean()), float(max(train["edges"].mean(), 1.0))
        given = self.max_atoms is not None or self.max_edges is not None
        evaluation = split != "train"
        count = self.val_batch_size if evaluation and not given else self.batch_size
        if self.max_atoms is not None:
            count = self.max_atoms / mean_atoms
        elif self.max_edges is not None:
            count = self.max_edges / mean_edges
        atoms = self.max_atoms if self.max_atoms is not None else math.ceil(count * mean_atoms)
        if self.max_atoms is None and not evaluation:
            atoms = max(atoms, int(train["atoms"].max()))
        structures = self.max_structures if self.max_structures is not None else max(math.ceil(2 * count), 1)
        if self.max_edges is not None:
            edges = self.max_edges
        elif evaluation:
            edges = math.ceil(atoms / mean_atoms * mean_edges * 1.1)
        else:  # the room for the spread of edges per atom that pads the fewest edges over an epoch
            edges = self._least_padded_edges(train, atoms, atoms / mean_atoms * mean_edges, structures)
        if evaluation:  # one shape for validation and test, large enough for every structure in them
            held = [self.sizes[name] for name in ("val", "test") if name in self.sizes and len(self.sizes[name]["atoms"])]
            atoms = max([atoms, *(int(h["atoms"].max()) for h in held)])
            edges = max([edges, *(int(h["edges"].max()) for h in held)])
        elif given:
            self._refuse_larger_than(atoms, edges)
        return int(atoms), int(max(edges, 1)), int(structures)

    def _least_padded_edges(self, sizes: dict[str, np.ndarray], atoms: int, mean_edges: float, structures: int) -> int:
        """The edge budget, among the mean batch's edges plus 0-40%, whose packing of the first
        epoch pads the fewest edges in all (batches x budget: what a graphed epoch computes);
        ties go to the larger budget (fewer, fuller batches)."""
        key = (len(sizes["edges"]), int(sizes["edges"].sum()), atoms, round(mean_edges, 6), structures, self.seed)
        cache = self.__dict__.setdefault("_edge_budgets", {})  # six packings of the epoch: once per training set
        if key in cache:
            return cache[key]
        largest = int(sizes["edges"].max())
        best = None
        for room in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4):
            edges = max(math.ceil(mean_edges * (1.0 + room)), largest)
            if not (sizes["atoms"] <= atoms).all():
                return edges  # refused later, by name
            sampler = PackedBatchSampler(sizes["atoms"], sizes["edges"], atoms, edges, structures, seed=self.seed)
            cost = len(sampler.batches()) * edges
            if best is None or cost <= best[0]:
                best = (cost, edges)
        cache[key] = best[1]
        return best[1]

    def _refuse_larger_than(self, atoms: int, edges: int) -> None:
        """`DataError` naming the first training structure that does not fit the budget alone."""
        sizes = self.sizes["train"]
        too_large = (sizes["atoms"] > atoms) | (sizes["edges"] > edges)
        if too_large.any():
            k = int(np.argmax(too_large))
            try:
                name = self.label_table("train")[1](k)
            except NotImplementedError:
                name = f"training structure {k}"
            raise DataError(
                f"{name}: {int(sizes['atoms'][k])} atoms and {int(sizes['edges'][k])} edges do not fit the batch "
                f"budget of {atoms} atoms and {edges} edges ({int(too_large.sum())} such structures); raise "
                f"data.max_atoms / data.max_edges to at least {int(sizes['atoms'].max())} / "
                f"{int(sizes['edges'].max())}, or leave them null to have them chosen from the data"
            )

    def _batch_sampler(self, split: str, shuffle: bool) -> Sampler[list[int]]:
        """This rank's batches of ``split``: packed to `batch_budget` when `packs`; else filled to
        ``max_atoms`` / ``max_edges`` when set (training), else ``batch_size`` (``val_batch_size``
        unshuffled) structures."""
        world, rank = self._world()
        packed = self.batch_budget(split)
        if packed is not None:
            sizes = self.sizes[split]
            return PackedBatchSampler(sizes["atoms"], sizes["edges"], *packed, seed=self.seed, shuffle=shuffle,
                                      num_replicas=world, rank=rank)
        budget = self.max_atoms or self.max_edges
        if budget is not None and shuffle:
            sizes = self.sizes[split]["atoms" if self.max_atoms else "edges"]
            return BudgetBatchSampler(sizes, budget, self.seed, shuffle, world, rank)
        batch_size = self.batch_size if shuffle else self.val_batch_size
        sampler = EpochShuffleSampler(len(self.datasets[split]), self.seed, shuffle, world, rank)
        return BatchSampler(sampler, batch_size, drop_last=False)

    def packing_summary(self) -> str | None:
        """One line: the training budget, batches per epoch and the padding they leave; None
        when not packed."""
        budget = self.batch_budget("train")
        if budget is None:
            return None
        sampler = self._batch_sampler("train", shuffle=True)
        padding = sampler.padding()
        evaluation = self.batch_budget("val") if self.sizes.get("val") is not None else None
        line = (f"batches packed to {budget[0]} atoms, {budget[1]} edges, {budget[2]} structures: "
                f"{len(sampler.batches())} a training epoch, padding {100 * padding['atoms']:.1f}% of atoms and "
                f"{100 * padding['edges']:.1f}% of edges")
        if evaluation is not None:
            line += f"; validation and test packed to {evaluation[0]} atoms, {evaluation[1]} edges, {evaluation[2]} structures"
        return line

    def batch_totals(self, split: str = "train") -> np.ndarray | None:
        """[B, 3] atoms, edges and structures of each of this rank's batches of ``split`` in the
        first epoch (from the stored sizes; no structure is loaded); None without stored sizes."""
        sizes = self.sizes.get(split)
        if sizes is None:
            return None
        batches = list(self._batch_sampler(split, shuffle=split == "train"))
        return np.array([(sizes["atoms"][b].sum(), sizes["edges"][b].sum(), len(b)) for b in batches], dtype=np.int64)

    def _loader(self, split: str, shuffle: bool) -> GraphLoader:
        trainer = getattr(self, "trainer", None)
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        pin = on_cuda if self.pin_memory is None else self.pin_memory
        # two workers: 7.65 -> 6.80 ms per 3BPA step on an H200 (docs/performance.md, issue 20)
        workers = (2 if on_cuda else 0) if self.num_workers is None else self.num_workers
        common = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)
        batches = ResumableBatchSampler(self._batch_sampler(split, shuffle))
        return GraphLoader(self.datasets[split], batch_sampler=batches, **common)

    def train_dataloader(self) -> GraphLoader:
        loader = self._loader("train", shuffle=True)
        # a run resumed from a mid-epoch checkpoint starts its epoch after the batches it has
        # trained on (processed: optimiser step done; the checkpoint is taken after it). After
        # the epoch's last batch Lightning draws nothing more, and an empty iterator would end the fit.
        trainer = self.trainer
        if trainer is not None and trainer.fit_loop.restarting:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if done < len(loader.batch_sampler):
                loader.batch_sampler.skip_next(done)
        return loader

    def val_dataloader(self) -> GraphLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> GraphLoader:
        return self._loader("test", shuffle=False)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Check the batch's elements against the model's (those of `statistics`) on the CPU,
        so that the training loop's device copy of the check never waits for the GPU."""
        statistics = getattr(self, "statistics", None)
        if statistics is not None and isinstance(batch, Batch):
            known = torch.as_tensor(statistics.elements, dtype=batch.atomic_numbers.dtype)
            if not bool(torch.isin(batch.atomic_numbers, known).all()):
                raise DataError(unknown_elements(batch.atomic_numbers, statistics.elements))
        return batch

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Asynchronous copies (from pinned memory when ``pin_memory``): the host prepares the
        next batch while the GPU works. A batch from a loader worker crosses in one copy
        (`mlip.data.loader.batch_to_device`), others in one per tensor. Training batches stay
        on the host for a module that ``copies_training_batches`` (`PotentialModule` with
        CUDA graphs: one copy straight into its padded buffers, `mlip.models.cuda_graph.PaddedInputs`)."""
        if isinstance(batch, Batch):
            trainer = getattr(self, "trainer", None)
            module = trainer.lightning_module if trainer is not None else None
            if (trainer is not None and trainer.training and self.neighbour_list != "device"
                    and getattr(module, "copies_training_batches", False)):
                return batch  # the module's graphed step copies it into its padded buffers itself
            return batch_to_device(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.neighbour_list == "device":
            batch = add_batch_edges(batch, self.r_max)
        return batch

    def _statistics(self, summary: TrainingSetSummary) -> DatasetStatistics:
        return statistics_from_summary(summary, self.e0s if self.e0s is not None else "least_squares", self.elements)


class AtomicDataModule(GraphDataModule):
    """Structures read from files (any reader) and held in memory as graphs.

    Args:
        train_files: file(s) (or LMDB folders) of the training data.
        val_files / test_files: explicit validation / test files; when absent, drawn from
            the training files with ``val_fraction`` / ``test_fraction`` and ``split_seed``.
        format: reader name or ``"auto"`` (by file name); see `mlip.data.readers`.
        reader: options for that reader (label keys, MPTrj energy choice, ...).
        on_error: ``"raise"`` at the first bad record, or ``"skip"`` bad records and report their count.
        Other arguments: see `GraphDataModule`.
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
        format: str = "auto",
        reader: Mapping[str, Any] | None = None,
        on_error: str = "raise",
        **batching: Any,
    ):
        super().__init__(r_max, **batching)
        self.train_files, self.val_files, self.test_files = _as_list(train_files), _as_list(val_files), _as_list(test_files)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.format, self.reader, self.on_error = format, dict(reader or {}), on_error
        self.splits: dict[str, list[Structure]] = {}
        self.skipped = SkippedRecords()

    def _read(self, files: Sequence[str]) -> list[Structure]:
        structures = []
        for f in files:
            structures.extend(iter_structures(f, self.format, on_error=self.on_error, skipped=self.skipped, **self.reader))
        if files and not structures:
            raise DataError(f"{', '.join(files)}: no structures")
        return structures

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        structures = self._read(self.train_files)
        needs_energy = isinstance(self.e0s, str) and self.e0s == "least_squares"
        if needs_energy and structures and all(s.energy is None for s in structures):
            keys = {**DEFAULT_KEYS, **self.reader}
            raise DataError("cannot fit E0s: " + missing_labels_message(", ".join(self.train_files), keys)
                            + " (or give data.e0s)")
        if self.val_files or self.test_files:
            train = structures
            val, test = self._read(self.val_files), self._read(self.test_files)
            if not self.val_files:
                train, val, _ = split_by_seed(train, self.val_fraction, 0.0, self.split_seed)
        else:
            train, val, test = split_by_seed(structures, self.val_fraction, self.test_fraction, self.split_seed)
        self.splits = {}
        for name, split in {"train": train, "val": val, "test": test}.items():
            # geometry checks (mlip.data.checks): under on_error=skip a structure that fails them is counted and left out
            pairs = [(s, self._graph(s)) for s in split]
            split, graphs = [s for s, g in pairs if g is not None], [g for _, g in pairs if g is not None]
            if pairs and not split:
                raise DataError(f"every {name} structure was left out:\n{self.skipped.summary()}")
            self.splits[name] = split
            self.sizes[name] = {
                "atoms": np.array([g.num_nodes for g in graphs], dtype=np.int64),
                "edges": np.array([g.edge_index.shape[1] for g in graphs], dtype=np.int64),
            }
            if name == "train":
                self.statistics = self._statistics(TrainingSetSummary.from_structures(split, graphs))
            if self.graph_cutoff is None:  # edges are rebuilt on the device; do not hold them
                for graph in graphs:
                    graph.edge_index, graph.shifts = graph.edge_index[:, :0], graph.shifts[:0]
            self.datasets[name] = graphs
        if self.skipped.count:
            log.warning("%s", self.skipped.summary())

    def _graph(self, structure: Structure):
        """The structure's graph; None when it fails a geometry check under ``on_error="skip"``."""
        try:
            return structure_to_graph(structure, self.r_max, self.fixed_atom_forces)
        except DataError as exc:
            if self.on_error == "raise":
                raise
            self.skipped.add(str(exc))
            return None

    def add_structures(self, structures: Sequence[Structure], split: str = "train") -> list:
        """Append ``structures`` to ``split`` after `setup` (fine-tuning's replay structures: trained
        on, and held out for validation); returns their graphs (those that pass the geometry checks)."""
        pairs = [(s, self._graph(s)) for s in structures]
        pairs = [(s, g) for s, g in pairs if g is not None]
        graphs = [g for _, g in pairs]
        sizes = self.sizes[split]
        sizes["atoms"] = np.concatenate([sizes["atoms"], np.array([g.num_nodes for g in graphs], dtype=np.int64)])
        sizes["edges"] = np.concatenate([sizes["edges"], np.array([g.edge_index.shape[1] for g in graphs], dtype=np.int64)])
        if self.graph_cutoff is None:
            for graph in graphs:
                graph.edge_index, graph.shifts = graph.edge_index[:, :0], graph.shifts[:0]
        self.splits[split] = list(self.splits[split]) + [s for s, _ in pairs]
        self.datasets[split] = list(self.datasets[split]) + graphs
        return graphs

    def label_table(self, split: str) -> tuple[dict[str, np.ndarray], Any]:
        structures = self.splits[split]
        table = {
            "has_energy": np.array([s.energy is not None for s in structures], dtype=bool),
            "has_forces": np.array([s.forces is not None for s in structures], dtype=bool),
            "has_stress": np.array([s.stress is not None for s in structures], dtype=bool),
            "periodic": np.array([s.is_periodic for s in structures], dtype=bool),
        }
        return table, lambda k: structures[k].source


class StoreDataModule(GraphDataModule):
    """Structures from packed stores written by ``mlip-preprocess``, read at random with workers.

    Args:
        train_store: the training store folder.
        val_store / test_store: stores for validation / test; when absent, drawn from the
            training store with ``val_fraction`` / ``test_fraction`` and ``split_seed``.
        verify: check the shards' checksums when opening.
        Other arguments: see `GraphDataModule`. With ``e0s: null`` the statistics written at
        preprocess time are used as they are (when the whole store is the training set);
        otherwise they are recomputed from the store's per-shard summaries.
    """

    def __init__(
        self,
        train_store: str | Path,
        r_max: float,
        val_store: str | Path | None = None,
        test_store: str | Path | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        verify: bool = False,
        **batching: Any,
    ):
        batching.setdefault("e0s", None)
        super().__init__(r_max, **batching)
        self.stores = {"train": train_store, "val": val_store, "test": test_store}
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.verify = verify
        self._parts: dict[str, tuple[StoreDataset, np.ndarray]] = {}

    def _open(self, path: str | Path) -> StoreDataset:
        store = StoreDataset(path, self.graph_cutoff, self.fixed_atom_forces, self.verify)
        if abs(store.store_cutoff - self.r_max) > 1e-9:
            raise DataError(
                f"{path}: preprocessed with cutoff {store.store_cutoff} Å but the model's r_max is {self.r_max} Å; "
                f"neighbour counts (statistics, edge budget) would be wrong: rerun mlip-preprocess with cutoff={self.r_max}"
            )
        return store

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train = self._open(self.stores["train"])
        train_rows = np.arange(len(train))
        parts: dict[str, tuple[StoreDataset, np.ndarray]] = {}
        if self.stores["val"] is None:
            fractions = (self.val_fraction, self.test_fraction if self.stores["test"] is None else 0.0)
            train_rows, val_rows, test_rows = split_indices(len(train), *fractions, self.split_seed)
            parts["val"] = (train, np.sort(val_rows))
            if self.stores["test"] is None:
                parts["test"] = (train, np.sort(test_rows))
        parts["train"] = (train, np.sort(train_rows))
        for name in ("val", "test"):
            if self.stores[name] is not None:
                store = self._open(self.stores[name])
                parts[name] = (store, np.arange(len(store)))
        for name, (store, rows) in parts.items():
            self.datasets[name] = store if len(rows) == len(store) else Subset(store, rows.tolist())
            self.sizes[name] = {"atoms": store.n_atoms[rows], "edges": store.n_edges[rows]}
        self._parts = parts
        whole = len(parts["train"][1]) == len(train)
        if whole and self.e0s is None and self.elements is None:
            self.statistics = train.statistics()
        else:
            self.statistics = self._statistics(train.summary(None if whole else parts["train"][1]))
        log.info("store %s: %d train / %d val / %d test structures", self.stores["train"],
                 *(len(parts[k][1]) if k in parts else 0 for k in ("train", "val", "test")))

    def label_table(self, split: str) -> tuple[dict[str, np.ndarray], Any]:
        store, rows = self._parts[split]
        table = {k: v[rows] for k, v in store.labels().items()}
        return table, lambda k: store.source(int(rows[k]))
