import numpy as np
import pytest

from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import BatchSampler

from mlip.data.loader import GraphLoader
from mlip.data.samplers import BudgetBatchSampler, EpochShuffleSampler, ResumableBatchSampler


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    s = EpochShuffleSampler(20, seed=1)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(4)
    assert list(s) != first
    s.set_epoch(3)
    assert list(s) == first and sorted(first) == list(range(20))


def test_epoch_sampler_shares_like_distributed_sampler():
    shares = [list(EpochShuffleSampler(11, seed=2, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4] == [len(EpochShuffleSampler(11, num_replicas=3, rank=r)) for r in range(3)]
    everything = sum(shares, [])
    assert set(everything) == set(range(11)) and len(everything) == 12  # one index repeated to even out
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.fixture
def sizes():
    return np.random.default_rng(0).integers(1, 40, size=200)


def test_budget_batches_respect_the_budget_and_cover_every_structure(sizes):
    sampler = BudgetBatchSampler(sizes, budget=100, seed=5)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(sizes[b].sum() <= 100 for b in batches)
    # greedy: the next structure would not have fitted
    order = [i for b in batches for i in b]
    ends = np.cumsum([len(b) for b in batches])[:-1]
    assert all(sizes[batches[k]].sum() + sizes[order[ends[k]]] > 100 for k in range(len(batches) - 1))


def test_oversized_structure_gets_its_own_batch():
    batches = list(BudgetBatchSampler(np.array([5, 50, 5, 5]), budget=20, shuffle=False))
    assert batches == [[0], [1], [2, 3]]


def test_budget_batches_are_deterministic_per_seed_and_epoch(sizes):
    a, b = BudgetBatchSampler(sizes, 100, seed=5), BudgetBatchSampler(sizes, 100, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(BudgetBatchSampler(sizes, 100, seed=6)) != list(BudgetBatchSampler(sizes, 100, seed=5))


def test_budget_batches_split_evenly_across_ranks(sizes):
    world = 3
    samplers = [BudgetBatchSampler(sizes, 100, seed=1, num_replicas=world, rank=r) for r in range(world)]
    for s in samplers:
        s.set_epoch(7)
    shares = [list(s) for s in samplers]
    assert len({len(s) for s in shares}) == 1 and all(len(s) == len(samplers[0]) for s in shares)
    every = samplers[0].batches()
    dealt = [b for k in range(len(shares[0])) for s in shares for b in [s[k]]]
    assert dealt[: len(every)] == every  # rank r takes batches r, r + world, ...


@pytest.mark.parametrize("kind", ["fixed", "budget"])
def test_resumable_batches_reach_lightnings_set_epoch_and_skip(kind):
    inner = (BatchSampler(EpochShuffleSampler(30, seed=1), 4, drop_last=False) if kind == "fixed"
             else BudgetBatchSampler(np.arange(1, 31), budget=40, seed=1))
    loader = GraphLoader(list(range(30)), batch_sampler=ResumableBatchSampler(inner))
    _set_sampler_epoch(loader, 0)  # what Lightning calls at each epoch
    first = list(loader.batch_sampler)
    _set_sampler_epoch(loader, 1)
    second = list(loader.batch_sampler)
    assert second != first and sorted(sum(first, [])) == sorted(sum(second, []))
    loader.batch_sampler.skip_next(3)  # a resume after 3 batches of epoch 1
    assert list(loader.batch_sampler) == second[3:]
    assert list(loader.batch_sampler) == second and len(loader.batch_sampler) == len(second)  # one epoch only
