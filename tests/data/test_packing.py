"""Batches packed to one budget of atoms, edges and structures (`PackedBatchSampler`, the data module's ``packed``)."""

import numpy as np
import pytest
from ase.io import write

from mlip.data.crystals import make_crystals
from mlip.data.datamodule import AtomicDataModule
from mlip.data.samplers import BudgetBatchSampler, PackedBatchSampler
from mlip.data.structure import DataError


def _crystal_like_sizes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of 4-128 (fcc supercells) and ~40 edges per atom at 5 Å, with a spread."""
    rng = np.random.default_rng(seed)
    atoms = 4 * rng.choice([1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 27, 32], size=n)
    edges = (atoms * rng.uniform(30, 50, size=n)).astype(np.int64)
    return atoms, edges


def test_every_batch_fits_the_budget_and_every_structure_comes_once_per_epoch():
    atoms, edges = _crystal_like_sizes(3000)
    sampler = PackedBatchSampler(atoms, edges, max_atoms=1024, max_edges=40_000, max_structures=32, seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert sorted(k for b in batches for k in b) == list(range(3000))
        assert all(atoms[b].sum() <= 1024 and edges[b].sum() <= 40_000 and len(b) <= 32 for b in batches)
    sampler.set_epoch(0)
    first = sampler.batches()
    assert PackedBatchSampler(atoms, edges, 1024, 40_000, 32, seed=1).batches() == first  # deterministic
    sampler.set_epoch(1)
    assert sampler.batches() != first  # reshuffled per epoch


def test_packing_leaves_less_padding_than_the_greedy_cut():
    """The window of open batches fills the gaps a large cell leaves: under 5% of the edges are
    padding on crystal-like sizes, against more for the greedy cut of the same order."""
    atoms, edges = _crystal_like_sizes(3000)
    budget = int(16 * edges.mean())
    packed = PackedBatchSampler(atoms, edges, 10**6, budget, 10**6, seed=0)
    greedy = PackedBatchSampler(atoms, edges, 10**6, budget, 10**6, seed=0, open_batches=1)
    assert packed.padding()["edges"] < 0.05 < greedy.padding()["edges"]
    # the greedy cut with one open batch is the old edge-budget sampler's
    assert greedy.batches() == BudgetBatchSampler(edges, budget, seed=0).batches()


def test_ranks_share_the_packed_batches():
    atoms, edges = _crystal_like_sizes(500)
    whole = PackedBatchSampler(atoms, edges, 1024, 40_000, 32, seed=2).batches()
    shares = [list(PackedBatchSampler(atoms, edges, 1024, 40_000, 32, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) and shares[0] + shares[1] != []
    assert {tuple(b) for s in shares for b in s} == {tuple(b) for b in whole}


def test_a_structure_larger_than_the_budget_is_refused():
    with pytest.raises(ValueError, match=r"structure 1 \(200 atoms"):
        PackedBatchSampler(np.array([10, 200]), np.array([100, 100]), 128, 10_000, 8)


@pytest.fixture(scope="module")
def crystals(tmp_path_factory):
    path = tmp_path_factory.mktemp("packing") / "crystals.xyz"
    write(path, make_crystals(60, seed=5, max_atoms=64))
    return str(path)


def test_the_budget_comes_from_the_batch_size_and_holds_the_largest_structure(crystals):
    data = AtomicDataModule(crystals, r_max=4.0, batch_size=4, val_batch_size=8, packed=True, val_fraction=0.1,
                            test_fraction=0.1)
    data.setup()
    sizes = data.sizes["train"]
    atoms, edges, structures = data.batch_budget("train")
    assert atoms == max(int(np.ceil(4 * sizes["atoms"].mean())), int(sizes["atoms"].max()))
    assert edges >= max(4 * sizes["edges"].mean(), sizes["edges"].max()) and structures == 8
    evaluation = data.batch_budget("val")
    assert evaluation == data.batch_budget("test") and evaluation[0] >= 8 * sizes["atoms"].mean()
    counts = [b.num_graphs for b in data.train_dataloader()]
    assert abs(np.mean(counts) - 4) < 1.5 and sum(counts) == len(sizes["atoms"])  # about batch_size structures
    assert sum(b.num_graphs for b in data.val_dataloader()) == len(data.sizes["val"]["atoms"])
    assert "padding" in data.packing_summary()


def test_a_training_structure_larger_than_a_given_budget_is_named(crystals):
    data = AtomicDataModule(crystals, r_max=4.0, max_atoms=16, max_edges=10**6, val_fraction=0.1, test_fraction=0.0)
    data.setup()
    assert data.packs()  # both budgets given: packed
    with pytest.raises(DataError, match=r"crystals.xyz#\d+: \d+ atoms and \d+ edges do not fit the batch budget "
                                        r"of 16 atoms.*data.max_atoms"):
        data.batch_budget("train")


def test_unpacked_batching_is_unchanged_on_the_cpu(crystals):
    data = AtomicDataModule(crystals, r_max=4.0, batch_size=4, val_fraction=0.1, test_fraction=0.0)
    data.setup()
    assert not data.packs() and data.batch_budget("train") is None
    assert [b.num_graphs for b in data.train_dataloader()][:-1] == [4] * (len(data.sizes["train"]["atoms"]) // 4)


def test_same_size_molecules_batch_batch_size_at_a_time(tmp_path):
    """One molecule's conformers (3BPA-like: atoms fixed, edges varying): every packed batch
    holds batch_size of them, as unpacked batching would, so no epoch gets more steps."""
    from ase.build import molecule

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(50):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.15, atoms.positions.shape)
        atoms.info["energy"] = 0.0
        frames.append(atoms)
    write(tmp_path / "ethanol.xyz", frames)
    data = AtomicDataModule(str(tmp_path / "ethanol.xyz"), r_max=3.0, batch_size=5, packed=True, val_fraction=0.1,
                            test_fraction=0.0, reader={"energy_key": "energy"})
    data.setup()
    assert data.sizes["train"]["edges"].std() > 0
    counts = [b.num_graphs for b in data.train_dataloader()]
    assert counts[:-1] == [5] * (len(counts) - 1)


@pytest.mark.parametrize("open_batches", [8, 1])
def test_every_training_epoch_yields_its_first_epochs_count_of_batches(open_batches):
    """Lightning counts an epoch's batches once and validates when the count is reached: an
    epoch packed into one batch fewer would end without validation. Shorter epochs split,
    longer ones merge, each structure at most once."""
    rng = np.random.default_rng(0)
    n = 3000
    atoms = np.where(rng.random(n) < 0.5, rng.integers(4, 20, n), rng.integers(20, 129, n))
    edges = atoms * np.where(rng.random(n) < 0.3, 20, 45)
    sampler = PackedBatchSampler(atoms, edges, int(16 * atoms.mean()), int(16.8 * edges.mean()), 32, seed=2,
                                 open_batches=open_batches)
    raw = [len(sampler._pack(sampler._order(e))) for e in range(12)]
    assert len(set(raw)) > 1  # the plain packing's count does vary
    count = len(sampler)
    for epoch in range(12):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        flat = [k for batch in batches for k in batch]
        assert len(batches) == len(sampler) == count == raw[0]
        assert len(flat) == len(set(flat)) == n - sampler.left_out and sampler.left_out <= 32
        assert all(sampler._fits(batch) for batch in batches)


def test_a_packed_run_validates_every_epoch(tmp_path, emt_file):
    """batch_size 3, seed 1 on the test set: the plain packing gives 13, 12, 12 batches."""
    import csv
    import json

    from mlip.cli.train import train
    from tests.conftest import compose_train_config

    train(compose_train_config(tmp_path, emt_file, "data.packed=true", "data.batch_size=3", "seed=1",
                               "trainer.max_epochs=3", "module.ema_decay=null"))
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val_loss")}) == [0, 1, 2]
    assert [e["epoch"] for e in json.loads((tmp_path / "phase_times.json").read_text())["epochs"]] == [0, 1, 2]
