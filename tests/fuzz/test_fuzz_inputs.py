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
