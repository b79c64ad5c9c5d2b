#!/usr/bin/env python
"""How fast does MD run through mlip (ASE, torch-sim) and how large a system fits, against mace-torch?

    python scripts/benchmark_md.py --mace-torch /tmp/site_mace:/tmp/site          # on the GPU machine
    python scripts/benchmark_md.py --device cpu --cells 2 --systems 2 4 --steps 10 --large-cells 2 3 \\
        --mace-torch <mace-torch site>                                            # a tiny CPU check

mace-torch (in its own environment, scripts/benchmark_md_mace.py, a subprocess of this call)
saves a seeded e3nn ScaleShiftMACE for Si (128x0e+128x1o, ℓ ≤ 3, ν = 3, r_max 6 Å); we convert
that file, so both sides run the same weights. Three cases, each a table with ratios:

1. ``ase``: velocity Verlet (2 fs) through `MLIPCalculator` against ``MACECalculator`` (e3nn and
   cuequivariance), diamond Si of ``--cells`` n³ cubic cells: MD steps per second.
2. ``torchsim``: batched Langevin NVT (300 K, 2 fs) of ``--systems`` Si cells of 64 atoms through
   `mlip.integrations.torchsim.MLIPModel` against torch-sim's own ``MaceModel``: atom-steps/s.
   Needs torch-sim on both sides (on Python 3.12: torch-sim-atomistic 0.4.1 and PyTables, numexpr,
   blosc2, py-cpuinfo, ndindex, msgpack as wheels).
3. ``large``: one energy+forces+stress call on Si of ``--large-cells`` (1728 atoms up), eager and
   replayed from a CUDA graph, against mace-torch's cuequivariance model, up to the first size
   that does not fit: ms, atom-steps/s, peak GPU memory.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import (ase_md_steps_per_s, peak_gb, reset_peak, silicon_atoms, synchronize,
                    torchsim_atom_steps_per_s)

HERE = Path(__file__).resolve().parent


def mace_rows(args, *command: str) -> list[str]:
    """Rows printed by benchmark_md_mace.py ``command`` in mace-torch's environment."""
    env = dict(os.environ, PYTHONPATH=f"{args.mace_torch}:{HERE}", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    done = subprocess.run([sys.executable, str(HERE / "benchmark_md_mace.py"), *command], env=env,
                          capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        print(f"mace-torch {command[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}", flush=True)
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("|")]


def ase_rows(model_file: Path, args) -> list[str]:
    from mlip.calculator import MLIPCalculator

    rows = []
    calc = MLIPCalculator(model_file, device=args.device, dtype=args.dtype)
    for n in args.cells:
        atoms = silicon_atoms(n)
        rate = ase_md_steps_per_s(calc, atoms, args.steps)
        builds = f" ({calc.neighbours.builds} list builds)" if calc.neighbours is not None else ""
        rows.append(f"| Si {len(atoms)} ASE MD | mlip MLIPCalculator{builds} | {args.dtype} | {rate:.1f} | steps/s "
                    f"| {peak_gb():.2f} |")
        print(rows[-1], flush=True)
    return rows


def torchsim_rows(model_file: Path, args) -> list[str]:
    from mlip.integrations.torchsim import MLIPModel

    rows = []
    model = MLIPModel(model_file, device=args.device, dtype=getattr(torch, args.dtype))
    for count in args.systems:
        print(f"  starting {count} systems", flush=True)  # a timed-out call shows where it stood
        cells = [silicon_atoms(args.cell, seed=k) for k in range(count)]
        builds = model.neighbours.builds
        rate = torchsim_atom_steps_per_s(model, cells, args.steps, args.device, getattr(torch, args.dtype))
        rebuilt = (model.neighbours.builds - builds) / count
        graphs = model.graphed.graphs.stats() if model.graphed is not None else None
        captured = (f"; {graphs['captures']} graph captures, {graphs['capture_s']:.1f} s so far"
                    if graphs is not None else "")
        rows.append(f"| {count} x Si {len(cells[0])} torch-sim NVT | mlip MLIPModel ({rebuilt:.1f} list builds per "
                    f"system, warm-up included{captured}) | {args.dtype} | {rate:,.0f} | atom-steps/s | {peak_gb():.2f} |")
        print(rows[-1], flush=True)
    return rows


def large_rows(model_file: Path, args) -> list[str]:
    """Eager and graphed E+F+S calls on ever larger Si, up to the first size that does not fit."""
    from types import SimpleNamespace

    from mlip.data.verlet import VerletList
    from mlip.export import load_model
    from mlip.models.cuda_graph import GraphedPotential

    potential = load_model(model_file, device=args.device, dtype=args.dtype).requires_grad_(False)
    dtype = getattr(torch, args.dtype)
    rows = []
    for n in args.large_cells:
        atoms = silicon_atoms(n)
        for name in ("", " + CUDA graph") if args.device == "cuda" else ("",):
            try:
                positions = torch.as_tensor(atoms.positions, dtype=dtype, device=args.device)
                cell = torch.as_tensor(atoms.cell[:], dtype=dtype, device=args.device)
                edge_index, shifts, _ = VerletList(potential.r_max, 0.0)(positions, cell, atoms.positions,
                                                                         atoms.cell[:], atoms.pbc)
                graph = SimpleNamespace(atomic_numbers=torch.full((len(atoms),), 14, device=args.device),
                                        positions=positions, cell=cell.view(1, 3, 3), edge_index=edge_index,
                                        shifts=shifts, num_graphs=1, batch=None)
                reset_peak()
                call = (GraphedPotential(potential, max_graphs=1) if name
                        else lambda g: potential(g, compute_forces=True, compute_stress=True))
                print(f"  starting Si {len(atoms)}{name}", flush=True)  # a timed-out call shows where it stood
                start = time.perf_counter()
                call(graph)  # warm-up (and the capture)
                synchronize()
                first_s = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(args.repeats):
                    call(graph)
                synchronize()
                ms = 1000 * (time.perf_counter() - start) / args.repeats
            except torch.cuda.OutOfMemoryError:
                rows.append(f"| Si {len(atoms)} E+F+S | mlip{name} | {args.dtype} | out of memory | ms | - |")
                print(rows[-1], flush=True)
                return rows
            rows.append(f"| Si {len(atoms)} E+F+S | mlip{name} (first call {first_s:.1f} s) | {args.dtype} | {ms:.2f} | ms "
                        f"| {peak_gb():.2f} |")
            print(rows[-1], flush=True)
            del call, graph
    return rows


def parse(rows: list[str]) -> dict[str, list[tuple[str, float, str]]]:
    """case -> [(engine, value, peak)] from table rows."""
    table: dict[str, list[tuple[str, float, str]]] = {}
    for row in rows:
        case, engine, _, value, _, peak = [c.strip() for c in row.strip("|").split("|")]
        number = re.sub(r"[,]", "", value)
        if re.fullmatch(r"[0-9.]+", number):
            table.setdefault(case, []).append((engine, float(number), peak))
    return table


def ratios(ours: list[str], theirs: list[str], higher_is_better: bool) -> None:
    """Per case: our best over mace-torch's best (a speed-up), with both peaks."""
    mine, other = parse(ours), parse(theirs)
    print("\n| case | mlip | mace-torch's best | speed-up | peak GB mlip / mace-torch |\n|---|---|---|---|---|")
    for case, entries in mine.items():
        if case not in other:
            continue
        pick = max if higher_is_better else min
        engine, value, peak = pick(entries, key=lambda e: e[1])
        other_engine, other_value, other_peak = pick(other[case], key=lambda e: e[1])
        speedup = value / other_value if higher_is_better else other_value / value
        print(f"| {case} | {engine} {value:,.2f} | {other_engine} {other_value:,.2f} | {speedup:.2f}x | {peak} / {other_peak} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mace-torch", required=True, help="PYTHONPATH of a mace-torch 0.3.16 environment")
    parser.add_argument("--cases", nargs="+", default=["ase", "torchsim", "large"], choices=["ase", "torchsim", "large"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cells", nargs="+", type=int, default=[3, 6], help="ASE MD: Si of n³ cubic cells (216, 1728 atoms)")
    parser.add_argument("--steps", type=int, default=200, help="timed MD steps (after a tenth as many)")
    parser.add_argument("--systems", nargs="+", type=int, default=[64, 256, 1024], help="torch-sim: systems per batch")
    parser.add_argument("--cell", type=int, default=2, help="torch-sim: each system is Si of cell³ cubic cells (64 atoms)")
    parser.add_argument("--large-cells", nargs="+", type=int, default=[6, 8, 11, 16, 22, 28, 35, 44, 55],
                        help="large: Si of n³ cubic cells, 1728 to 1.3 M atoms")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from mlip.convert.mace_torch import convert_mace_torch
    from mlip.export import save_model

    work = Path(tempfile.mkdtemp())
    mace_file = work / "mace_si.model"
    mace_rows(args, "save", str(mace_file))
    model_file = save_model(convert_mace_torch(mace_file), work / "mlip_si.safetensors")
    common = ["--dtype", args.dtype, "--device", args.device, "--steps", str(args.steps), "--repeats", str(args.repeats)]
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, torch {torch.__version__}\n"
          "| case | engine | dtype | value | unit | peak GB |\n|---|---|---|---|---|---|", flush=True)
    if "ase" in args.cases:
        ours = ase_rows(model_file, args)
        ratios(ours, mace_rows(args, "ase", str(mace_file), *common, "--cells", *map(str, args.cells)), True)
    if "torchsim" in args.cases:
        ours = torchsim_rows(model_file, args)
        theirs = mace_rows(args, "torchsim", str(mace_file), *common, "--systems", *map(str, args.systems),
                           "--cell", str(args.cell))
        ratios(ours, theirs, True)
    if "large" in args.cases:
        ours = large_rows(model_file, args)
        ratios(ours, mace_rows(args, "large", str(mace_file), *common, "--cells", *map(str, args.large_cells)), False)


if __name__ == "__main__":
    main()
