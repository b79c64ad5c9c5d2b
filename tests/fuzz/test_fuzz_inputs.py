"""Fuzzing every reader and the model loaders with mutated valid files (issue 19's rule).

Every case ends, within `SECONDS_PER_CASE`, in a correct read or in our error type
(`DataError` for data, `ModelFileError` / `ConversionError` for model files) naming the
file; a hang, a crash or any other exception fails the test and names the case. LMDB
files are mutated in a subprocess each, since a damaged LMDB could take the process down.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import ase.io
import pytest
import torch

from mlip.convert.mace_torch import ConversionError, convert_mace_torch
from mlip.data.readers import read_structures
from mlip.data.structure import DataError
from mlip.export import ModelFileError, load_model, save_model
from tests.conftest import make_tiny_potential
from tests.data.formats import emt_slabs, mptrj_frame, write_aselmdb, write_mptrj, write_oc20_lmdb
from tests.fuzz.mutations import broken_text, byte_flips, inflated_numbers, outcome, renamed_keys, truncations

ROOT = Path(__file__).resolve().parents[2]
ORACLE = ROOT / "tests" / "convert" / "mace_torch_oracle" / "mace_plain_first_nu1_l0_f64.model"


def text_cases(data: bytes, keys: list[bytes]):
    yield from truncations(data)
    yield from byte_flips(data)
    yield from inflated_numbers(data)
    yield from renamed_keys(data, keys)
    yield from broken_text(data)


def run_cases(tmp_path: Path, name: str, cases, read, ours) -> Counter:
    findings, tally = [], Counter()
    for k, (case, data) in enumerate(cases):
        path = tmp_path / f"case{k}{name}"
        path.write_bytes(data)
        result = outcome(lambda: read(path), ours)
        tally[result if result in ("read", "refused") else "bad"] += 1
        if result not in ("read", "refused"):
            findings.append(f"{case}: {result}")
        path.unlink()
    assert not findings, f"{name}: " + "; ".join(findings)
    print(f"{name}: {dict(tally)}")
    return tally


@pytest.fixture(scope="module")
def frames():
    return emt_slabs(3, seed=4)


def test_extxyz_reader_survives_fuzzing(tmp_path, frames):
    path = tmp_path / "valid.xyz"
    ase.io.write(path, frames, format="extxyz")
    tally = run_cases(tmp_path, ".xyz", text_cases(path.read_bytes(), [b"energy", b"forces", b"Properties", b"species"]),
                      lambda p: read_structures(p, format="extxyz", energy_key="energy", forces_key="forces",
                                                stress_key=None, virial_key=None),
                      (DataError,))
    assert tally["refused"] > 20 and tally["read"] >= 1, tally


def test_mptrj_reader_survives_fuzzing(tmp_path, frames):
    path = tmp_path / "valid.json"
    write_mptrj(path, {"mp-1": [mptrj_frame(a, "mp-1", None) for a in frames[:2]], "mp-2": [mptrj_frame(frames[2], "mp-2", None)]})
    keys = [b"structure", b"lattice", b"species", b"force", b"uncorrected_total_energy", b"xyz"]
    tally = run_cases(tmp_path, ".json", text_cases(path.read_bytes(), keys),
                      lambda p: read_structures(p, format="mptrj"), (DataError,))
    assert tally["refused"] > 20, tally


def test_model_file_loader_survives_fuzzing(tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        path = save_model(make_tiny_potential(), tmp_path / "valid.safetensors")
    finally:
        torch.set_default_dtype(torch.float32)
    data = path.read_bytes()
    cases = [*truncations(data), *byte_flips(data), *inflated_numbers(data[:2000], seed=3),
             *renamed_keys(data, [b"model_spec", b"format", b"data_offsets", b"e0s"]), *broken_text(data)]
    tally = run_cases(tmp_path, ".safetensors", cases, lambda p: load_model(p), (ModelFileError,))
    assert tally["refused"] > 20, tally


def test_mace_torch_converter_survives_fuzzing(tmp_path):
    data = ORACLE.read_bytes()
    cases = [*truncations(data, 10), *byte_flips(data, 10), *broken_text(data)]
    tally = run_cases(tmp_path, ".model", cases, lambda p: convert_mace_torch(p), (ConversionError,))
    assert tally["refused"] > 10, tally


LMDB_CHILD = """
import sys
from mlip.data.readers import read_structures
from mlip.data.structure import DataError
try:
    read_structures(sys.argv[1], format=sys.argv[2])
    print("read")
except DataError:
    print("refused")
"""


@pytest.mark.parametrize("kind", ["oc20_lmdb", "aselmdb"])
def test_lmdb_readers_survive_fuzzing(tmp_path, frames, kind):
    path = tmp_path / ("valid.lmdb" if kind == "oc20_lmdb" else "valid.aselmdb")
    (write_oc20_lmdb if kind == "oc20_lmdb" else write_aselmdb)(path, frames)
    data = path.read_bytes()
    cases = [*truncations(data, 6), *byte_flips(data, 6), ("empty file", b"")]
    findings, tally = [], Counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k, (case, mutated) in enumerate(cases):
        target = tmp_path / f"case{k}{path.suffix}"
        target.write_bytes(mutated)
        try:
            done = subprocess.run([sys.executable, "-c", LMDB_CHILD, str(target), kind], env=env, capture_output=True,
                                  text=True, timeout=60)
            result = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else \
                f"ESCAPED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:] }"
        except subprocess.TimeoutExpired:
            result = "HUNG"
        tally[result if result in ("read", "refused") else "bad"] += 1
        if result not in ("read", "refused"):
            findings.append(f"{case}: {result}")
    assert not findings, f"{kind}: " + "; ".join(findings)
    print(f"{kind}: {dict(tally)}")
    assert tally["refused"] >= 3, tally


def test_ase_database_reader_survives_fuzzing(tmp_path, frames):
    from tests.data.formats import write_ase_db

    path = tmp_path / "valid.db"
    write_ase_db(path, frames)
    data = path.read_bytes()
    tally = run_cases(tmp_path, ".db", [*truncations(data, 10), *byte_flips(data, 10), ("empty file", b"")],
                      lambda p: read_structures(p, format="ase_db"), (DataError,))
    assert tally["refused"] >= 5, tally


def test_compressed_oc20_extxyz_reader_survives_fuzzing(tmp_path, frames):
    import lzma

    folder = tmp_path / "valid"
    folder.mkdir()
    ase.io.write(folder / "0.extxyz.xz", frames, format="extxyz")
    with lzma.open(folder / "0.txt.xz", "wt") as handle:
        handle.write("".join(f"random{k},frame{k},-1.5\n" for k in range(len(frames))))
    data = (folder / "0.extxyz.xz").read_bytes()
    findings, tally = [], Counter()
    for k, (case, mutated) in enumerate([*truncations(data, 8), *byte_flips(data, 8), ("empty file", b"")]):
        (folder / "0.extxyz.xz").write_bytes(mutated)
        result = outcome(lambda: read_structures(folder, format="oc20_extxyz"), (DataError,))
        tally[result if result in ("read", "refused") else "bad"] += 1
        if result not in ("read", "refused"):
            findings.append(f"{case}: {result}")
    assert not findings, "oc20_extxyz: " + "; ".join(findings)
    print(f"oc20_extxyz: {dict(tally)}")


STORE_CHILD = """
import sys
from mlip.data.store.dataset import StoreDataset
from mlip.data.structure import DataError
try:
    store = StoreDataset(sys.argv[1], cutoff=4.0)
    [store[k] for k in range(len(store))]
    print("read")
except DataError:
    print("refused")
"""


def test_store_survives_fuzzing(tmp_path, frames):
    from mlip.data.store.dataset import StoreDataset
    from mlip.data.store.writer import write_store

    source = tmp_path / "frames.xyz"
    ase.io.write(source, frames * 2, format="extxyz")
    store = tmp_path / "store"
    write_store(source, store, cutoff=4.0, shard_size=3)
    manifest = (store / "manifest.json").read_bytes()

    def read_all(path):
        (store / "manifest.json").write_bytes(path.read_bytes())
        dataset = StoreDataset(store, cutoff=4.0)
        return [dataset[k] for k in range(len(dataset))]

    keys = [b"shards", b"n_structures", b"format", b"file", b"statistics"]
    tally = run_cases(tmp_path, ".json", [*truncations(manifest, 8), *byte_flips(manifest, 8),
                                          *inflated_numbers(manifest, 8), *renamed_keys(manifest, keys),
                                          *list(broken_text(manifest))[:3]], read_all, (DataError,))
    (store / "manifest.json").write_bytes(manifest)
    shard = sorted(store.glob("*.h5"))[0]
    original = shard.read_bytes()
    findings = []
    for k, (case, mutated) in enumerate([*truncations(original, 4), *byte_flips(original, 4, seed=5)]):
        shard.write_bytes(mutated)
        done = subprocess.run([sys.executable, "-c", STORE_CHILD, str(store)], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        result = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else \
            f"ESCAPED (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
        tally[result if result in ("read", "refused") else "bad"] += 1
        if result not in ("read", "refused"):
            findings.append(f"shard {case}: {result}")
    shard.write_bytes(original)
    assert not findings, "store: " + "; ".join(findings)
    print(f"store: {dict(tally)}")
