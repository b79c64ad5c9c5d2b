#!/usr/bin/env python
"""Support for benchmark_md.py (not run by hand): its MD cases with mace-torch, in mace-torch's environment.

    PYTHONPATH=/tmp/site_mace:/tmp/site TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \\
        python scripts/benchmark_md_mace.py save model.model
    ... ase model.model --cells 3 6 --steps 200 | torchsim model.model --systems 64 256 | large model.model --cells 6 11

Imports nothing from mlip (mace-torch pins e3nn 0.4.4). Prints rows ``| case | engine | dtype |
value | unit | peak GB |`` that benchmark_md.py collects.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from benchmark_mace_torch import batch_of, model_of
from timing import (ase_md_steps_per_s, peak_gb, reset_peak, silicon_atoms, synchronize,
                    torchsim_atom_steps_per_s)

AVG_NEIGHBOURS = 45.0  # about the neighbours per atom of diamond Si at 6 Å


def save(path: Path, shape: str) -> None:
    """A seeded e3nn ScaleShiftMACE for Si (128x0e+128x1o, ℓ ≤ 3, r_max 6 Å) as a .model file."""
    torch.set_default_dtype(torch.float64)
    torch.save(model_of([14], 6.0, "128x0e+128x1o", "e3nn", AVG_NEIGHBOURS, "cpu", shape), path)


def ase_rows(path: Path, cells: list[int], steps: int, dtype: str, device: str) -> None:
    """Velocity Verlet (2 fs) through ``MACECalculator``, with and without its cuequivariance path."""
    from mace.calculators import MACECalculator

    for name, options in (("", {}), (" cueq", {"enable_cueq": True})):
        try:
            calc = MACECalculator(model_paths=str(path), device=device, default_dtype=dtype, **options)
        except Exception as error:  # its cuequivariance path needs cuequivariance-torch and a GPU
            print(f"MACECalculator{name}: not timed ({type(error).__name__}: {error})", flush=True)
            continue
        for n in cells:
            atoms = silicon_atoms(n)
            rate = ase_md_steps_per_s(calc, atoms, steps)
            print(f"| Si {len(atoms)} ASE MD | mace-torch MACECalculator{name} | {dtype} | {rate:.1f} | steps/s "
                  f"| {peak_gb():.2f} |", flush=True)


def torchsim_rows(path: Path, systems: list[int], steps: int, dtype: str, device: str, cell: int) -> None:
    """Batched Langevin NVT (2 fs, 300 K) of ``systems`` Si cells through torch-sim's own MACE interface."""
    from torch_sim.models.mace import MaceModel

    for name, cueq in (("", False), (" cueq", True)):
        try:
            model = MaceModel(model=torch.load(path, map_location=device, weights_only=False), device=torch.device(device),
                              dtype=getattr(torch, dtype), enable_cueq=cueq)
        except Exception as error:
            print(f"torch-sim MaceModel{name}: not timed ({type(error).__name__}: {error})", flush=True)
            continue
        for count in systems:
            cells = [silicon_atoms(cell, seed=k) for k in range(count)]
            rate = torchsim_atom_steps_per_s(model, cells, steps, device, getattr(torch, dtype))
            print(f"| {count} x Si {len(cells[0])} torch-sim NVT | mace-torch MaceModel{name} | {dtype} | {rate:,.0f} "
                  f"| atom-steps/s | {peak_gb():.2f} |", flush=True)


def large_rows(path: Path, cells: list[int], dtype: str, device: str, repeats: int) -> None:
    """Model call (energy, forces, stress) on ever larger Si with mace-torch's cuequivariance path,
    up to the first size that does not fit."""
    from mace.cli.convert_e3nn_cueq import run as to_cueq

    torch.set_default_dtype(getattr(torch, dtype))
    source = torch.load(path, map_location="cpu", weights_only=False).to(getattr(torch, dtype))
    model = to_cueq(source, device=device).to(device)  # converted in the dtype it runs in
    for n in cells:
        atoms = silicon_atoms(n)
        try:
            batch = batch_of([atoms], [14], 6.0, device)
            reset_peak()
            start = time.perf_counter()
            model(batch.to_dict(), compute_stress=True, training=False)  # warm-up
            synchronize()
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(repeats):
                model(batch.to_dict(), compute_stress=True, training=False)
            synchronize()
            ms = 1000 * (time.perf_counter() - start) / repeats
        except torch.cuda.OutOfMemoryError:
            print(f"| Si {len(atoms)} E+F+S | mace-torch cueq | {dtype} | out of memory | ms | - |", flush=True)
            return
        print(f"| Si {len(atoms)} E+F+S | mace-torch cueq (first call {first_s:.1f} s) | {dtype} | {ms:.2f} | ms "
              f"| {peak_gb():.2f} |", flush=True)
        del batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save")
    p.add_argument("path", type=Path)
    p.add_argument("--shape", default="medium")
    for name in ("ase", "torchsim", "large"):
        p = sub.add_parser(name)
        p.add_argument("path", type=Path)
        p.add_argument("--dtype", default="float32")
        p.add_argument("--device", default="cuda")
        p.add_argument("--steps", type=int, default=200)
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--cells", nargs="+", type=int, default=[3, 6])
        p.add_argument("--systems", nargs="+", type=int, default=[64, 256, 1024])
        p.add_argument("--cell", type=int, default=2, help="torch-sim: each system is Si of cell³ cubic cells")
    args = parser.parse_args()
    if args.command == "save":
        save(args.path, args.shape)
    elif args.command == "ase":
        ase_rows(args.path, args.cells, args.steps, args.dtype, args.device)
    elif args.command == "torchsim":
        torchsim_rows(args.path, args.systems, args.steps, args.dtype, args.device, args.cell)
    else:
        large_rows(args.path, args.cells, args.dtype, args.device, args.repeats)


if __name__ == "__main__":
    main()
