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


class BudgetBatchSampler(Sampler[list[int]]):
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
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside a world of {num_replicas}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.budget, self.seed, self.shuffle = int(budget), seed, shuffle
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, before they are dealt to the ranks."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.sizes)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else np.arange(n)
        ends = np.cumsum(self.sizes[order])
        batches, start, used = [], 0, 0
        while start < n:
            # the furthest structure whose running total stays within the budget
            stop = int(np.searchsorted(ends, used + self.budget, side="right"))
            stop = max(stop, start + 1)
            batches.append(order[start:stop].tolist())
            used, start = int(ends[stop - 1]), stop
        self._cache = (self.epoch, batches)
        return batches

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
