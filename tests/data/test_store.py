"""The packed store: round trip, resume after a kill, checksums, statistics, workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.graph import structure_to_graph
from mlip.data.loader import GraphLoader
from mlip.data.readers import read_structures
from mlip.data.statistics import compute_statistics
from mlip.data.store import StoreDataset, verify_store, write_store
from mlip.data.store import writer as writer_module
from mlip.data.structure import DataError
from tests.conftest import random_alloy
from tests.data.formats import emt_slabs, write_aselmdb

REPO = Path(__file__).resolve().parents[2]


def _manifest(path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def test_round_trip_reader_store_loader_gives_identical_arrays(tmp_path, emt_file):
    structures = read_structures(emt_file)
    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=7)
    store = StoreDataset(tmp_path / "store", cutoff=4.0)
    assert len(store) == len(structures) == 40 and len(store.files) == 6
    for k in (0, 6, 7, 20, 39):
        s, g = structures[k], store[k]
        ref = structure_to_graph(s, 4.0)
        for key in ("positions", "atomic_numbers", "cell", "pbc", "forces", "energy", "stress", "shifts", "edge_index",
                    "has_energy", "has_stress", "forces_mask"):
            assert torch.equal(g[key], ref[key]), key
        assert store.source(k) == s.source
    assert store.n_edges[20] == structure_to_graph(structures[20], 4.0).edge_index.shape[1]
    manifest = _manifest(tmp_path / "store")
    assert manifest["n_structures"] == 40 and manifest["elements"] == [28, 29, 79]
    assert manifest["units"]["forces"] == "eV/Å" and manifest["n_atoms"] == sum(s.n_atoms for s in structures)


def test_tags_fixed_and_missing_labels_survive_the_store(tmp_path):
    frames = emt_slabs(5)
    write_aselmdb(tmp_path / "slabs.aselmdb", frames)
    write_store(tmp_path / "slabs.aselmdb", tmp_path / "store", cutoff=4.0, shard_size=2,
                reader={"stress_key": None, "virial_key": None})
    store = StoreDataset(tmp_path / "store", cutoff=4.0, fixed_atom_forces=False)
    g = store[3]
    assert torch.equal(g.tags, torch.tensor(frames[3].get_tags()))
    assert torch.equal(g.fixed, torch.tensor(frames[3].get_tags() == 0))
    assert torch.equal(g.forces_mask, ~g.fixed) and not g.has_stress.item()
    labels = store.labels()
    assert labels["has_energy"].all() and labels["has_forces"].all() and not labels["has_stress"].any()


def test_statistics_from_store_equal_those_in_memory(tmp_path, emt_file):
    structures = read_structures(emt_file)
    expected = compute_statistics(structures, [structure_to_graph(s, 4.0) for s in structures])
    manifest = write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=9)
    for key, value in expected.to_dict().items():
        assert np.allclose(manifest["statistics"][key], value, rtol=1e-10), key
    # a subset recomputed from the shards equals the in-memory statistics of that subset
    rows = [1, 5, 9, 10, 33]
    subset = [structures[k] for k in rows]
    direct = compute_statistics(subset, [structure_to_graph(s, 4.0) for s in subset])
    from mlip.data.statistics import statistics_from_summary

    from_store = statistics_from_summary(StoreDataset(tmp_path / "store", cutoff=None).summary(rows))
    for key, value in direct.to_dict().items():
        assert np.allclose(getattr(from_store, key), value, rtol=1e-10), key


def test_interrupted_preprocess_resumes_to_the_same_store(tmp_path, emt_file, monkeypatch):
    reference = write_store(emt_file, tmp_path / "reference", cutoff=4.0, shard_size=6)
    calls = {"n": 0}
    original = writer_module.write_shard

    def dies_on_third_shard(path, arrays, attrs):
        calls["n"] += 1
        if calls["n"] == 3:
            path.with_name(path.name + ".partial").write_bytes(b"half a shard")  # what a kill leaves
            raise KeyboardInterrupt
        original(path, arrays, attrs)

    monkeypatch.setattr(writer_module, "write_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        write_store(emt_file, tmp_path / "resumed", cutoff=4.0, shard_size=6)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5.partial"]
    monkeypatch.setattr(writer_module, "write_shard", original)
    resumed = write_store(emt_file, tmp_path / "resumed", cutoff=4.0, shard_size=6)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert resumed["statistics"] == reference["statistics"]
    assert not list((tmp_path / "resumed").glob("*.partial"))


def test_sigkilled_preprocess_resumes_to_the_same_store(tmp_path):
    from mlip.data.emt import ensure_emt_dataset

    data = ensure_emt_dataset(tmp_path / "big.xyz", n_structures=300, seed=3)
    reference = write_store(data, tmp_path / "reference", cutoff=4.0, shard_size=4)
    command = [sys.executable, "-m", "mlip.cli.preprocess", f"input={data}", f"output={tmp_path / 'killed'}",
               "cutoff=4.0", "shard_size=4"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "shard-00002.h5").exists() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists(), "finished before the kill; use more structures"
    resumed = write_store(data, tmp_path / "killed", cutoff=4.0, shard_size=4)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]


def test_changed_settings_are_refused(tmp_path, emt_file):
    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=10)
    with pytest.raises(DataError, match="different settings"):
        write_store(emt_file, tmp_path / "store", cutoff=5.0, shard_size=10)
    with pytest.raises(DataError, match="adsorption energies.*e0s=zero"):
        write_store(emt_file, tmp_path / "other", cutoff=4.0, energy_reference="adsorption")


def test_damaged_shard_and_incomplete_store_are_named(tmp_path, emt_file):
    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=10)
    shard = tmp_path / "store" / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00001.h5: checksum differs"):
        verify_store(tmp_path / "store")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not a complete mlip store"):
        StoreDataset(tmp_path / "half", cutoff=4.0)


def test_loader_with_workers_matches_single_process(tmp_path, emt_file):
    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=8)
    store = StoreDataset(tmp_path / "store", cutoff=4.0)
    order = list(range(39, -1, -3))
    single = list(GraphLoader(torch.utils.data.Subset(store, order), batch_size=5))
    multi = list(GraphLoader(torch.utils.data.Subset(store, order), batch_size=5, num_workers=2))
    assert len(single) == len(multi)
    for a, b in zip(single, multi):
        assert torch.equal(a.positions, b.positions) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.energy, b.energy)


def test_packed_worker_batches_unpack_to_the_same_batch(tmp_path, emt_file):
    from torch_geometric.data import Batch

    from mlip.data.loader import PackedBatch

    write_store(emt_file, tmp_path / "store", cutoff=4.0, shard_size=8)
    graphs = [StoreDataset(tmp_path / "store", cutoff=4.0)[k] for k in (3, 17, 30)]
    batch = Batch.from_data_list(graphs)
    import pickle

    unpacked = pickle.loads(pickle.dumps(PackedBatch.pack(batch))).unpack()
    assert unpacked.num_graphs == 3 and type(unpacked).__name__ == type(batch).__name__
    for key in batch.keys():
        same = torch.equal if isinstance(batch[key], torch.Tensor) else (lambda a, b: a == b)
        assert same(unpacked[key], batch[key]), key


def test_preprocessing_names_or_skips_overlapping_atoms(tmp_path, rng):
    frames = []
    for _ in range(4):
        atoms = random_alloy(rng)
        atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    frames[1].positions[3] = frames[1].positions[2]
    ase.io.write(tmp_path / "in.xyz", frames, format="extxyz")
    reader = {"energy_key": "energy", "forces_key": "forces", "stress_key": None, "virial_key": None}
    with pytest.raises(DataError, match=r"in.xyz#1: atoms 2 and 3 are 0.000 Å apart"):
        write_store(tmp_path / "in.xyz", tmp_path / "raise", cutoff=4.0, reader=reader)
    manifest = write_store(tmp_path / "in.xyz", tmp_path / "skip", cutoff=4.0, reader=reader, on_error="skip")
    assert manifest["n_structures"] == 3 and manifest["skipped"]["count"] == 1
    assert "overlapping atoms" in manifest["skipped"]["reasons"][0]
