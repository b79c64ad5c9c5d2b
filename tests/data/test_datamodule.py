import ase.io
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.datamodule import AtomicDataModule, EpochShuffleSampler, split_by_seed
from mlip.data.structure import DataError
from tests.conftest import random_alloy


def _write(path, rng, n=10, stress=True):
    frames = []
    for _ in range(n):
        atoms = random_alloy(rng)
        results = dict(energy=float(rng.normal()), forces=rng.standard_normal((len(atoms), 3)))
        if stress:
            results["stress"] = rng.standard_normal(6)
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return str(path)


def test_split_by_seed_is_deterministic_and_disjoint():
    items = list(range(50))
    a = split_by_seed(items, 0.2, 0.1, seed=3)
    b = split_by_seed(items, 0.2, 0.1, seed=3)
    assert a == b
    train, val, test = a
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert sorted(train + val + test) == items
    assert split_by_seed(items, 0.2, 0.1, seed=4) != a


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    s = EpochShuffleSampler(20, seed=1)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(4)
    assert list(s) != first
    s.set_epoch(3)
    assert list(s) == first and sorted(first) == list(range(20))


def test_split_by_file_and_statistics_from_training_only(tmp_path, rng):
    dm = AtomicDataModule(
        train_files=_write(tmp_path / "train.xyz", rng, 12),
        val_files=_write(tmp_path / "val.xyz", rng, 3),
        test_files=_write(tmp_path / "test.xyz", rng, 4),
        r_max=3.0,
    )
    dm.setup()
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [12, 3, 4]
    assert dm.statistics.elements == sorted({int(z) for s in dm.splits["train"] for z in s.atomic_numbers})
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 8


def test_missing_label_for_requested_loss_names_the_record(tmp_path, rng):
    dm = AtomicDataModule(train_files=_write(tmp_path / "nostress.xyz", rng, 10, stress=False), r_max=3.0)
    dm.setup()
    dm.require_labels(energy=True, forces=True, stress=False)
    with pytest.raises(DataError, match=r"nostress.xyz#\d+: no stress label.*weight 0"):
        dm.require_labels(energy=True, forces=True, stress=True)
