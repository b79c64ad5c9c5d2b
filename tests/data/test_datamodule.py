import ase.io
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.datamodule import AtomicDataModule, StoreDataModule, split_by_seed
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


def test_store_data_module_splits_by_seed_and_uses_its_statistics(tmp_path, emt_file):
    from mlip.data.store import write_store

    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=16)
    dm = StoreDataModule(tmp_path / "store", r_max=4.0, val_fraction=0.2, test_fraction=0.1, max_atoms=60)
    dm.setup()
    assert [dm.split_size(k) for k in ("train", "val", "test")] == [28, 8, 4]
    memory = AtomicDataModule(emt_file, r_max=4.0, val_fraction=0.2, test_fraction=0.1)
    memory.setup()
    assert dm.statistics.elements == memory.statistics.elements
    assert dm.statistics.e0s == pytest.approx(memory.statistics.e0s, rel=1e-10)  # same training rows
    batches = list(dm.train_dataloader())
    assert sum(b.num_graphs for b in batches) == 28 and all(b.num_nodes <= 60 or b.num_graphs == 1 for b in batches)
    dm.require_labels(energy=True, forces=True, stress=True)  # clusters need no stress, the rest have it
    with pytest.raises(DataError, match="cutoff 4.0 Å but the model's r_max is 5.0"):
        StoreDataModule(tmp_path / "store", r_max=5.0).setup()


def test_store_data_module_names_a_record_without_a_requested_label(tmp_path, rng):
    from mlip.data.store import write_store

    path = _write(tmp_path / "nostress.xyz", rng, 10, stress=False)
    write_store(path, tmp_path / "store", cutoff=3.0, shard_size=4)
    dm = StoreDataModule(tmp_path / "store", r_max=3.0, val_store=None, val_fraction=0.2)
    dm.setup()
    dm.require_labels(energy=True, forces=True, stress=False)
    with pytest.raises(DataError, match=r"nostress.xyz#\d+: no stress label \(\d+ such in train\)"):
        dm.require_labels(energy=True, forces=True, stress=True)


def test_device_neighbour_lists_give_the_same_edges(tmp_path, emt_file):
    import torch

    workers = AtomicDataModule(emt_file, r_max=4.0, batch_size=6)
    device = AtomicDataModule(emt_file, r_max=4.0, batch_size=6, neighbour_list="device")
    workers.setup(), device.setup()
    a = next(iter(workers.train_dataloader()))
    b = device.on_after_batch_transfer(next(iter(device.train_dataloader())), 0)
    assert torch.equal(a.positions, b.positions)

    def edge_set(batch):
        return {(int(s), int(r), *map(int, shift)) for s, r, shift in zip(*batch.edge_index, batch.shifts)}

    assert edge_set(a) == edge_set(b) and len(edge_set(a)) == a.edge_index.shape[1]


def test_adsorption_energies_need_zero_e0s(emt_file):
    with pytest.raises(DataError, match="adsorption energies.*e0s: zero"):
        AtomicDataModule(emt_file, r_max=4.0, energy_reference="adsorption")


def test_fixed_atom_forces_can_be_left_out(tmp_path):
    from tests.data.formats import emt_slabs, write_oc20_lmdb

    write_oc20_lmdb(tmp_path / "slabs.lmdb", emt_slabs(6))
    dm = AtomicDataModule(tmp_path / "slabs.lmdb", r_max=4.0, e0s="zero", energy_reference="adsorption",
                          fixed_atom_forces=False, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.fixed.any() and (batch.forces_mask == ~batch.fixed).all()
    assert dm.statistics.e0s == [0.0, 0.0]


def test_edge_budget_batches(emt_file):
    dm = AtomicDataModule(emt_file, r_max=4.0, max_edges=1500)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(b.num_graphs for b in batches) == dm.split_size("train")
    assert all(b.edge_index.shape[1] <= 1500 or b.num_graphs == 1 for b in batches)
    assert len({b.num_graphs for b in batches}) > 1  # sizes vary: the budget, not a count, cuts batches


def test_overlapping_atoms_are_named_or_skipped_and_counted(tmp_path, rng):
    frames = ase.io.read(_write(tmp_path / "train.xyz", rng, 6), ":")
    frames[2].positions[1] = frames[2].positions[0] + 0.1  # 0.17 Å apart: overlapping atoms
    ase.io.write(tmp_path / "train.xyz", frames, format="extxyz")
    common = dict(train_files=str(tmp_path / "train.xyz"), r_max=3.0, val_fraction=0.0, test_fraction=0.0,
                  reader={"energy_key": "energy", "forces_key": "forces", "stress_key": "stress", "virial_key": None})
    with pytest.raises(DataError, match=r"train.xyz#2: atoms 0 and 1 are 0.173 Å apart .*overlapping atoms"):
        AtomicDataModule(**common).setup()
    dm = AtomicDataModule(on_error="skip", **common)
    dm.setup()
    assert len(dm.splits["train"]) == len(dm.datasets["train"]) == 5
    assert dm.skipped.count == 1 and "train.xyz#2" in dm.skipped.reasons[0]


def test_a_batch_with_an_element_the_model_lacks_is_refused_on_the_cpu(rng):
    """The training loop's element check runs on the CPU batch, before its copy to the device."""
    from types import SimpleNamespace

    from torch_geometric.data import Batch

    from mlip.data.datamodule import GraphDataModule
    from mlip.data.graph import structure_to_graph
    from mlip.data.readers.atoms import structure_from_atoms

    atoms = random_alloy(rng)
    batch = Batch.from_data_list([structure_to_graph(structure_from_atoms(atoms, "a"), 4.0)])
    module = GraphDataModule(r_max=4.0)
    assert module.on_before_batch_transfer(batch, 0) is batch  # no statistics yet: nothing to check
    module.statistics = SimpleNamespace(elements=sorted(set(atoms.numbers.tolist())))
    assert module.on_before_batch_transfer(batch, 0) is batch
    module.statistics = SimpleNamespace(elements=[28])  # Ni only
    with pytest.raises(DataError, match=r"element .*\(Z=29\).* not known to this model, trained on: Ni"):
        module.on_before_batch_transfer(batch, 0)


def test_loader_workers_and_pinning_follow_the_trainer_device_unless_set(tmp_path, rng):
    from types import SimpleNamespace

    import torch

    path = _write(tmp_path / "a.xyz", rng)

    def loader(device: str | None, **kwargs):
        module = AtomicDataModule(path, r_max=4.0, val_fraction=0.2, test_fraction=0.0, **kwargs)
        module.setup("fit")
        if device is not None:  # what the loaders read of a trainer
            module.trainer = SimpleNamespace(world_size=1, global_rank=0,
                                             strategy=SimpleNamespace(root_device=torch.device(device)))
        return module.val_dataloader()

    assert (loader(None).num_workers, loader(None).pin_memory) == (0, False)
    assert (loader("cpu").num_workers, loader("cpu").pin_memory) == (0, False)
    cuda = loader("cuda")
    assert (cuda.num_workers, cuda.pin_memory, cuda.persistent_workers) == (2, True, True)
    assert loader("cuda", num_workers=0, pin_memory=False).num_workers == 0
    assert loader("cpu", num_workers=3).num_workers == 3


@pytest.mark.parametrize("neighbour_list", ["workers", "device"])
def test_training_batches_stay_on_the_host_for_a_module_that_copies_them(tmp_path, rng, neighbour_list):
    """The graphed training step copies a host batch into its padded buffers itself; other
    stages, other modules and device neighbour lists (which need the batch there) get it moved
    (to the meta device here: no data, only where the tensors are)."""
    from types import SimpleNamespace

    import torch

    module = AtomicDataModule(_write(tmp_path / "a.xyz", rng), r_max=4.0, val_fraction=0.2, test_fraction=0.0,
                              neighbour_list=neighbour_list)
    module.setup("fit")
    meta = torch.device("meta")
    for training, copies in ((True, True), (False, True), (True, False)):
        module.trainer = None
        batch = next(iter(module.train_dataloader()))
        module.trainer = SimpleNamespace(training=training, lightning_module=SimpleNamespace(copies_training_batches=copies))
        moved = module.transfer_batch_to_device(batch, meta, 0)
        stays = training and copies and neighbour_list == "workers"
        assert moved.positions.device == (torch.device("cpu") if stays else meta), (training, copies)


def test_training_labels_under_other_keys_name_the_file_the_key_and_the_fix(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from mlip.data.datamodule import AtomicDataModule
    from mlip.data.structure import DataError

    frames = []
    for k in range(6):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=k)
        atoms.info["REF_energy"] = -3.0
        frames.append(atoms)
    write(tmp_path / "ref.xyz", frames)
    data = AtomicDataModule(str(tmp_path / "ref.xyz"), r_max=4.0, reader={"energy_key": "energy"})
    with pytest.raises(DataError, match=r"cannot fit E0s: .*ref.xyz: no structure has a label under the keys looked "
                                        r"for \(energy_key='energy'.*info: REF_energy.*energy_key: REF_energy"):
        data.setup()
