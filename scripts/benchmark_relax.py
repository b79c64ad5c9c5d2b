#!/usr/bin/env python
"""How many structures per second relax: batched FIRE against ASE's FIRE one structure at a time?

    python scripts/benchmark_relax.py --device cuda --structures 256      # on the GPU machine
    python scripts/benchmark_relax.py --device cpu --structures 16

The structures are rattled small alloy cells (fcc Cu/Ni/Au, 4-32 atoms) relaxed with the
benchmark MACE (``--hidden`` 128x0e+128x1o, ℓ ≤ 3, ν = 3, random weights scaled so the
first forces are ~1 eV/Å, as on a rattled DFT cell; the minima are those of a smooth
random potential) to ``--fmax``. Both runs relax the same structures in this
process; the batched run is also checked against the one-by-one minima (energy).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.build import bulk

from mlip.calculator import MLIPCalculator
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.simulation.batched_fire import BatchedFIRE
from mlip.simulation.relax import relax

ELEMENTS = [28, 29, 79]


def structures(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(tuple(rng.integers(1, 3, size=3)))
        atoms.numbers = rng.choice(ELEMENTS, size=len(atoms))
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        out.append((k, f"cell {k}", atoms))
    return out


def potential(device: str, dtype: torch.dtype, hidden: str = "128x0e+128x1o") -> Potential:
    torch.manual_seed(0)
    spec = {"target": "mlip.models.mace.MACE", "kwargs": dict(
        num_elements=3, avg_num_neighbors=40.0, r_max=5.0, num_bessel=8, max_ell=3,
        correlation=3, num_interactions=2, radial_mlp=[64, 64, 64], readout_mlp=16, hidden_irreps=hidden)}
    model = Potential(build_model(spec), ELEMENTS, [0.0] * 3, 30.0, 0.0, model_spec=spec)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--one-by-one", type=int, default=None, help="relax only the first N one by one (default all)")
    parser.add_argument("--max-structures", type=int, default=256, help="batched: structures in flight")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--hidden", default="128x0e+128x1o")
    parser.add_argument("--skins", nargs="+", type=float, default=[0.0, 1.0], help="batched: Verlet skins (Å)")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    model = potential(args.device, dtype, args.hidden)
    items = structures(args.structures)
    print(f"{args.device}, {args.dtype}, {len(items)} cells of {sum(len(a) for *_, a in items) / len(items):.1f} atoms on average")

    calculator = MLIPCalculator(model, args.device, args.dtype)
    relax(items[0][2], calculator, fmax=args.fmax, steps=3)  # warm-up (and CUDA graph capture)
    single = items[: args.one_by_one or len(items)]
    start = time.perf_counter()
    reference = [relax(atoms, calculator, "fire", args.fmax, args.steps, index=k) for k, _, atoms in single]
    one_by_one = len(single) / (time.perf_counter() - start)

    BatchedFIRE(model, args.fmax, 3, args.max_structures).run(items[:4])  # warm-up
    rows = [("ASE FIRE, one by one", reference, one_by_one, "")]
    for skin in args.skins:
        fire = BatchedFIRE(model, args.fmax, args.steps, args.max_structures, max_atoms=1 << 20, skin=skin)
        start = time.perf_counter()
        batched = fire.run(items)
        if args.device == "cuda":
            torch.cuda.synchronize()
        rows.append((f"batched FIRE, skin {skin} Å", batched, len(items) / (time.perf_counter() - start), fire.rebuilds))
    print("| mode | structures/s | converged | mean steps | neighbour-list builds |\n|---|---|---|---|---|")
    for name, results, per_second, rebuilds in rows:
        converged = sum(r.status == "converged" for r in results)
        print(f"| {name} | {per_second:.2f} | {converged}/{len(results)} | "
              f"{np.mean([r.steps for r in results]):.1f} | {rebuilds} |")
    for name, results, per_second, _ in rows[1:]:
        gap = max(abs(a.energy_final - b.energy_final) / len(b.atoms) for a, b in zip(results, reference))
        same = sum(a.status == b.status and a.steps == b.steps for a, b in zip(results, reference))
        print(f"{name}: {per_second / one_by_one:.1f}x one by one; same status and step count for "
              f"{same}/{len(reference)}; largest final-energy difference {gap:.1e} eV/atom")


if __name__ == "__main__":
    main()
