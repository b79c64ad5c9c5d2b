"""The crystal benchmark: its Pareto fronts by hand, its relaxation scores on EMT itself, and a tiny run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark_crystals  # noqa: E402


def test_the_pareto_front_keeps_the_rows_that_nothing_beats_on_both_axes():
    rows = [{"model": m, "forces_rmse": f, "fit_s": t} for m, f, t in
            (("a", 50.0, 100.0), ("b", 40.0, 200.0), ("c", 45.0, 300.0), ("d", 30.0, 400.0), ("e", 60.0, 50.0))]
    # by hand, cheapest first: e (60), a (50 < 60), b (40 < 50); c (45) is beaten by b; d (30 < 40)
    assert [r["model"] for r in benchmark_crystals.pareto(rows, "fit_s")] == ["e", "a", "b", "d"]
    speed = [{"model": m, "forces_rmse": f, "rate": r} for m, f, r in (("a", 50.0, 10.0), ("b", 40.0, 5.0),
                                                                        ("c", 45.0, 1.0))]
    assert [r["model"] for r in benchmark_crystals.pareto(speed, "rate", higher_is_better=True)] == ["a", "b"]


def test_the_crystal_benchmark_runs_end_to_end_on_the_cpu(tmp_path, dataset_dir):
    script = [sys.executable, str(ROOT / "scripts" / "benchmark_crystals.py")]
    subprocess.run([*script, "prepare", "--structures", "24", "--held-out", "4", "--relaxations", "3",
                    "--out", str(tmp_path)], check=True, cwd=ROOT, capture_output=True)
    folder = tmp_path / "emt_24"
    assert sorted(p.name for p in folder.iterdir()) == ["e0.xyz", "relax.xyz", "test.xyz", "train.xyz", "valid.xyz"]
    done = subprocess.run([*script, "run", "--sets", str(folder), "--models", "mace-8", "--epochs", "1",
                           "--device", "cpu", "--sanity", str(dataset_dir), "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    row, *samples = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert "error" not in row, row["error"]
    assert [s["set"] for s in samples] == ["mptrj_sample", "oc22_sample"]
    for sample in samples:  # the same oxides in two layouts: errors from mlip-train's test split
        assert "error" not in sample and np.isfinite(sample["forces_rmse"]), sample
    assert row["epochs"] == 1 and row["n_test"] == 4 and row["n_relax"] == 3 and row["emt_steps"] > 0
    assert 0.0 <= row["relax_converged"] <= 1.0 and row["relax_structures_per_s"] > 0
    assert np.isfinite([row["forces_rmse"], row["relaxed_energy_error"], row["relaxed_rmsd"]]).all()
    table = subprocess.run([*script, "table", str(tmp_path / "out" / "results.jsonl")], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout
    assert "| emt_24 | mace-8 | 0 | 1 |" in table and "Pareto front of force RMSE against training seconds" in table
    assert "| oc22_sample | mace-8 | 0 | 1 |" in table


def test_end_point_errors_are_zero_at_emts_own_minimum_and_count_the_nearest_image():
    from mlip.data.crystals import make_relaxations

    (reference,) = make_relaxations(1, seed=2, max_atoms=8)
    end = reference.copy()
    end.positions[0] += end.cell[1]  # the same structure, one atom wrapped
    gap, rmsd = benchmark_crystals.end_point_errors(end, reference)
    assert abs(gap) < 1e-9 and rmsd < 1e-12
    end.positions[1] += [0.3, 0.0, 0.4]  # one atom of n off by 0.5 Å: RMSD 0.5 / sqrt(n), by hand
    gap, rmsd = benchmark_crystals.end_point_errors(end, reference)
    assert gap > 0 and rmsd == pytest.approx(0.5 / np.sqrt(len(end)), rel=1e-12)
