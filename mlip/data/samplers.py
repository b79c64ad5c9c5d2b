"""Samplers that are deterministic per (seed, epoch) and split the data across ranks.

Both follow `torch.utils.data.DistributedSampler`'s contract: every rank sees the
same permutation, takes its own share, and all ranks get the same number of
items (batches), the shortfall filled by wrapping around to the start. Lightning
calls ``set_epoch`` on them at each epoch; a resumed run at epoch k sees exactly
the order of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` for (seed, epoch), the same on every rank and platform."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).numpy()


def _share(items: list, num_replicas: int, rank: int, pad: bool = True) -> list:
    """This rank's items: every num_replicas-th; ``pad`` wraps around so all ranks have as many."""
    if not pad:
        return items[rank::num_replicas]
    total = math.ceil(len(items) / num_replicas) * num_replicas if items else 0
    padded = items + [items[k % len(items)] for k in range(total - len(items))]
    return padded[rank:total:num_replicas]


class EpochShuffleSampler(Sampler[int]):
    """Structure indices, shuffled by (seed, epoch) or in order, this rank's share.

    Args:
        num_samples: structures in the dataset.
        seed: shuffling seed.
        shuffle: False keeps file order (validation, test).
        num_replicas / rank: the data-parallel world and this process's place in it.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside a world of {num_replicas}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch) if self.shuffle else np.arange(self.num_samples)
        # evaluation (no shuffle) is not padded: a duplicate would count twice in the metrics
        return iter(_share(order.tolist(), self.num_replicas, self.rank, pad=self.shuffle))

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.num_samples, self.num_replicas))
        return math.ceil(self.num_samples / self.num_replicas)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a size budget, cut anew each epoch from that epoch's order: the part the
    budget samplers share.

    A shuffled (training) sampler yields the same number of batches every epoch, its first
    epoch's: Lightning counts an epoch's batches once, before training, and validates when
    that count is reached, so an epoch that packed into one batch fewer would end without
    validation (and one more would validate before its end). A shorter epoch splits its
    fullest batch in two until the count is reached; a longer one merges its smallest batch
    into the emptiest that has room, and where none has, leaves that batch's structures out
    of this epoch (`left_out`; the next epoch's order brings them back).

    Subclasses give `_pack` (an epoch's order cut into batches) and `_fits` (whether indices
    fit one batch).
    """

    def __init__(self, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside a world of {num_replicas}")
        self.seed, self.shuffle = seed, shuffle
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.left_out = 0  # structures of the last packed epoch left out to keep the count
        self._cache: tuple[int, list[list[int]]] | None = None
        self._count: int | None = None  # batches every shuffled epoch yields

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, epoch: int) -> np.ndarray:
        n = self._size()
        return epoch_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, before they are dealt to the ranks."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = self._pack(self._order(self.epoch))
        self.left_out = 0
        if self.shuffle:
            if self._count is None:
                self._count = len(batches) if self.epoch == 0 else len(self._pack(self._order(0)))
            batches = self._keep_count(batches, self._count)
        self._cache = (self.epoch, batches)
        return batches

    def _keep_count(self, batches: list[list[int]], count: int) -> list[list[int]]:
        batches = [list(b) for b in batches]
        while len(batches) < count:
            k = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[k]) < 2:
                break
            half = len(batches[k]) // 2
            batches[k:k + 1] = [batches[k][:half], batches[k][half:]]
        while len(batches) > count:
            small = batches.pop(min(range(len(batches)), key=lambda i: self._load(batches[i])))
            for k in sorted(range(len(batches)), key=lambda i: self._load(batches[i])):
                if self._fits(batches[k] + small):
                    batches[k].extend(small)
                    break
            else:
                self.left_out += len(small)
        return batches

    def _size(self) -> int:
        raise NotImplementedError

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        raise NotImplementedError

    def _load(self, indices: list[int]) -> int:
        raise NotImplementedError

    def _fits(self, indices: list[int]) -> bool:
        raise NotImplementedError


class BudgetBatchSampler(EpochBatchSampler):
    """Batches filled up to a budget of atoms (or edges) instead of a fixed structure count.

    The structures are taken in the epoch's order and cut greedily into batches whose
    summed size stays within ``budget``; a structure larger than the budget gets a
    batch of its own. The batches are then dealt out to the ranks.

    Args:
        sizes: [S] size of each structure (atoms or edges).
        budget: largest summed size of a batch.
        seed / shuffle / num_replicas / rank: as `EpochShuffleSampler`.
    """

    def __init__(
        self, sizes: np.ndarray, budget: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ):
        if budget <= 0:
            raise ValueError(f"batch budget must be positive, got {budget}")
        super().__init__(seed, shuffle, num_replicas, rank)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.budget = int(budget)

    def _size(self) -> int:
        return len(self.sizes)

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        n = len(order)
        ends = np.cumsum(self.sizes[order])
        batches, start, used = [], 0, 0
        while start < n:
            # the furthest structure whose running total stays within the budget
            stop = int(np.searchsorted(ends, used + self.budget, side="right"))
            stop = max(stop, start + 1)
            batches.append(order[start:stop].tolist())
            used, start = int(ends[stop - 1]), stop
        return batches

    def _load(self, indices: list[int]) -> int:
        return int(self.sizes[indices].sum())

    def _fits(self, indices: list[int]) -> bool:
        return self._load(indices) <= self.budget

    def __iter__(self) -> Iterator[list[int]]:
        return iter(_share(self.batches(), self.num_replicas, self.rank))

    def __len__(self) -> int:
        return math.ceil(len(self.batches()) / self.num_replicas)


class ResumableBatchSampler(Sampler[list[int]]):
    """A batch sampler whose next epoch can start part-way through, for mid-epoch resumes.

    Wraps a batch sampler (our `BudgetBatchSampler`, or torch's ``BatchSampler`` over an
    `EpochShuffleSampler`). ``skip_next(k)`` drops the first k batches of the next epoch
    it yields, as index lists, without loading them: a run resumed from a checkpoint
    taken after k batches sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        # what Lightning calls set_epoch on (it looks at ``loader.batch_sampler.sampler``)
        self.sampler = getattr(batch_sampler, "sampler", batch_sampler)
        self._skip = 0

    def skip_next(self, batches: int) -> None:
        self._skip = int(batches)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        iterator = iter(self.batch_sampler)
        for _ in range(skip):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        return len(self.batch_sampler)


class PackedBatchSampler(EpochBatchSampler):
    """Batches packed to one budget of atoms, edges and structures together, for one padded shape.

    Every batch holds at most ``max_atoms`` atoms, ``max_edges`` edges and ``max_structures``
    structures, so that padded to exactly that budget (`mlip.models.cuda_graph`) all batches of
    an epoch share one shape: a training epoch replays one captured step. The structures are
    taken in the epoch's order and placed first-fit into a window of ``open_batches`` batches
    being filled; when none has room, the oldest is closed. The window fills gaps the plain
    greedy cut leaves (a large cell that ends a batch early), keeping the padding small while
    the order stays that epoch's shuffle. `padding` measures what is left.

    Args:
        atoms / edges: [S] atoms and edges of each structure.
        max_atoms / max_edges / max_structures: the budget; every structure must fit it alone.
        open_batches: batches filled at once (1: the greedy cut).
        seed / shuffle / num_replicas / rank: as `EpochShuffleSampler`.
    """

    def __init__(self, atoms: np.ndarray, edges: np.ndarray, max_atoms: int, max_edges: int, max_structures: int,
                 seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0, open_batches: int = 8):
        if min(max_atoms, max_edges, max_structures) <= 0:
            raise ValueError(f"batch budget must be positive, got {max_atoms} atoms, {max_edges} edges, "
                             f"{max_structures} structures")
        super().__init__(seed, shuffle, num_replicas, rank)
        self.atoms, self.edges = np.asarray(atoms, dtype=np.int64), np.asarray(edges, dtype=np.int64)
        too_large = (self.atoms > max_atoms) | (self.edges > max_edges)
        if too_large.any():
            k = int(np.argmax(too_large))
            raise ValueError(f"structure {k} ({self.atoms[k]} atoms, {self.edges[k]} edges) is larger than the batch "
                             f"budget ({max_atoms} atoms, {max_edges} edges)")
        self.budget = (int(max_atoms), int(max_edges), int(max_structures))
        self.open_batches = max(int(open_batches), 1)

    def _size(self) -> int:
        return len(self.atoms)

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        max_atoms, max_edges, max_structures = self.budget
        done: list[list[int]] = []
        filling: list[list] = []  # [indices, atoms, edges], oldest first
        for k in order.tolist():
            a, e = int(self.atoms[k]), int(self.edges[k])
            for open_batch in filling:
                if open_batch[1] + a <= max_atoms and open_batch[2] + e <= max_edges:
                    break
            else:
                if len(filling) == self.open_batches:
                    done.append(filling.pop(0)[0])
                open_batch = [[], 0, 0]
                filling.append(open_batch)
            open_batch[0].append(k)
            open_batch[1] += a
            open_batch[2] += e
            if len(open_batch[0]) == max_structures:
                filling.remove(open_batch)
                done.append(open_batch[0])
        done.extend(open_batch[0] for open_batch in filling)
        return done

    def _load(self, indices: list[int]) -> int:
        return int(self.atoms[indices].sum())

    def _fits(self, indices: list[int]) -> bool:
        max_atoms, max_edges, max_structures = self.budget
        return (len(indices) <= max_structures and int(self.atoms[indices].sum()) <= max_atoms
                and int(self.edges[indices].sum()) <= max_edges)

    def padding(self) -> dict[str, float]:
        """Share of the padded atoms and edges of this epoch's batches that are padding."""
        batches = self.batches()
        if not batches:
            return {"atoms": 0.0, "edges": 0.0}
        slots = len(batches)
        return {"atoms": 1.0 - float(self.atoms.sum()) / (slots * self.budget[0]),
                "edges": 1.0 - float(self.edges.sum()) / (slots * self.budget[1])}

    def __iter__(self) -> Iterator[list[int]]:
        return iter(_share(self.batches(), self.num_replicas, self.rank, pad=self.shuffle))

    def __len__(self) -> int:
        batches = len(self.batches())
        if not self.shuffle:
            return len(range(self.rank, batches, self.num_replicas))
        return math.ceil(batches / self.num_replicas)
