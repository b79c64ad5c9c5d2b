"""Support for the benchmark scripts (run as ``python scripts/<name>.py``): shared helpers.

Nothing here imports mlip: scripts/benchmark_mace_torch.py runs beside another e3nn.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk


def cuda_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Mean wall-clock milliseconds of ``fn()`` after ``warmup`` untimed calls, the GPU (if any) synchronised."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return 1000 * (time.perf_counter() - start) / repeats


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    """Start a fresh peak-memory count (GPU only)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    """Peak GPU memory since `reset_peak`, GB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0


def ase_md_steps_per_s(calc, atoms: Atoms, steps: int) -> float:
    """Velocity Verlet (2 fs, 300 K start) steps per second of ``calc`` on a copy of ``atoms``,
    after a tenth as many untimed steps; the peak-memory count starts before them."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = calc
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    reset_peak()
    dynamics.run(max(steps // 10, 2))  # warm-up (graph captures, kernel compilation)
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def torchsim_atom_steps_per_s(model, cells: list[Atoms], steps: int, device: str, dtype: torch.dtype) -> float:
    """Batched Langevin NVT (300 K, 2 fs) atom-steps per second of a torch-sim ``model`` on
    ``cells``, after a tenth as many untimed steps; the peak-memory count starts before them."""
    import torch_sim as ts

    nvt = getattr(getattr(ts, "Integrator", None), "nvt_langevin", None) or ts.nvt_langevin  # torch-sim 0.4+ / 0.3
    state = ts.io.atoms_to_state(cells, torch.device(device), dtype)
    reset_peak()
    state = ts.integrate(state, model, integrator=nvt, n_steps=max(steps // 10, 2), temperature=300.0, timestep=0.002)
    synchronize()
    start = time.perf_counter()
    ts.integrate(state, model, integrator=nvt, n_steps=steps, temperature=300.0, timestep=0.002)
    synchronize()
    return steps * state.positions.shape[0] / (time.perf_counter() - start)


def calculator_ms(calc, atoms: Atoms, repeats: int, warmup: int = 3) -> tuple[float, np.ndarray, float]:
    """Mean milliseconds of an ASE calculator's energy+forces+stress call on ``atoms`` (its
    results come back as numpy, so each call is complete), the forces of the last call, and the
    peak GPU memory (GB, 0 without CUDA) over the calls, warm-up (and graph capture) included."""
    atoms = atoms.copy()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for k in range(warmup + repeats):
        if k == warmup:
            start = time.perf_counter()
        atoms.positions[0, 0] += 1e-6 * (-1) ** k  # a new structure each call: no cached results
        calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
    ms = 1000 * (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0
    return ms, np.asarray(calc.results["forces"]), peak


def silicon_atoms(repeat: int, seed: int = 0) -> Atoms:
    """Diamond Si, ``repeat``³ cubic cells (8 atoms each), rattled by 0.05 Å."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((repeat,) * 3)
    atoms.positions += 0.05 * np.random.default_rng(seed).standard_normal(atoms.positions.shape)
    return atoms


def case_parser(description: str) -> argparse.ArgumentParser:
    """The options every model benchmark takes: samples, backends, dtypes, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--backends", nargs="+", default=["e3nn", "cueq"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calculator-only", action="store_true",
                        help="only the ASE-calculator rows (skip the model and training-step cases)")
    parser.add_argument("--cells", nargs="+", type=int, default=[3, 6],
                        help="diamond Si supercells of n³ cubic cells (3: 216 atoms, 6: 1728)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the ASE-calculator rows only")
    parser.add_argument("--shape", choices=list(SHAPES), default="medium",
                        help="the mace-torch model of the calculator rows: MACE-MP medium, MP-0b3-shaped "
                             "(density blocks, Agnesi transform, ZBL, 10 Bessel functions) or MH-1-shaped")
    return parser


# mace-torch ScaleShiftMACE keyword arguments of each --shape (128x0e+128x1o, ℓ ≤ 3, ν = 3, r_max 6 Å)
SHAPES = {
    "medium": {"num_bessel": 8, "first": "RealAgnosticResidualInteractionBlock",
               "later": "RealAgnosticResidualInteractionBlock", "options": {}},
    "mp0b3": {"num_bessel": 10, "first": "RealAgnosticDensityInteractionBlock",
              "later": "RealAgnosticDensityResidualInteractionBlock",
              "options": {"pair_repulsion": True, "distance_transform": "Agnesi"}},
    # MH-1-shaped: 512 hidden channels, 128-channel edge features, non-linear blocks
    "mh1": {"num_bessel": 10, "hidden": "512x0e+512x1o", "first": "RealAgnosticResidualNonLinearInteractionBlock",
            "later": "RealAgnosticResidualNonLinearInteractionBlock",
            "options": {"pair_repulsion": True, "distance_transform": "Agnesi", "edge_irreps": "128x0e+128x1o",
                        "use_edge_irreps_first": True, "use_agnostic_product": True, "apply_cutoff": False}},
}


def merged(overrides: list[str]) -> list[str]:
    """Hydra overrides with repeated keys resolved: the last value of each key wins."""
    by_key: dict[str, str] = {}
    for item in overrides:
        by_key[item.split("=", 1)[0]] = item
    return list(by_key.values())


def mlip_train(run_dir: Path, overrides: list[str], env: dict[str, str] | None = None) -> tuple[float, list[dict], dict]:
    """Run ``python -m mlip.cli.train`` into ``run_dir``; (wall seconds, metrics.csv rows, test metrics)."""
    import csv
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mlip.cli.train", *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=root, env=dict(os.environ, WANDB_MODE="disabled", **(env or {})),
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{run_dir.name} failed:\n{result.stderr[-4000:]}")
    rows = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    return wall, rows, json.loads((run_dir / "test_metrics.json").read_text())
