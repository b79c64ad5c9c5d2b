#!/usr/bin/env python
"""Which model family wins on crystals: held-out force error against training time and relaxation speed?

    python scripts/benchmark_crystals.py prepare --structures 5000 20000 --out .crystals
    python scripts/benchmark_crystals.py run --sets .crystals/emt_5000 --models mace-64 facet-64 tdn-64 \\
        --epochs 30 --parallel 3 --sanity ../shared/datasets --out $OUT     # equal epochs (runs share the GPU)
    python scripts/benchmark_crystals.py run ... --seconds 600              # equal wall-clock, one run at a time
    python scripts/benchmark_crystals.py table $OUT/results.jsonl           # the table and the Pareto fronts
    python scripts/benchmark_crystals.py prepare --structures 40 --held-out 8 --relaxations 4 --out /tmp/c && \\
        python scripts/benchmark_crystals.py run --sets /tmp/c/emt_40 --models mace-8 --epochs 1 \\
        --device cpu --out /tmp/c/out                                       # the tiny CPU check (CI)

``prepare`` makes the EMT crystal set (`mlip.data.crystals`: Al, Cu, Ag, Au, Ni, Pd, Pt fcc
cells of 4-128 atoms, 1-3 elements, vacancies, strain, rattle; energy, forces, stress) as
``emt_<n>/train.xyz`` (n structures), ``valid.xyz`` and ``test.xyz`` (``--held-out`` each, 500, other seeds),
``e0.xyz`` (EMT's isolated atoms) and ``relax.xyz`` (rattled cells and EMT's own FIRE
relaxation of each, to fmax 1e-3 eV/Å).

``run`` trains each model (`MODELS`: family-width, on the shipped recipe; lr 0.005, batches of
``--max-edges`` edges, E/F/S weights 1/100/10) through ``mlip-train``, ``--parallel`` runs at a time on the GPU (equal
epochs; ``fit_s`` then counts a shared GPU), then scores each model alone: force RMSE (meV/Å) and energy
RMSE (meV/atom) on ``test.xyz``, and the relaxation task: the trained model relaxes the same
starts with batched FIRE (fmax 0.01 eV/Å, cell fixed) and is compared with EMT's end point:
the EMT energy of the model's end structure minus EMT's relaxed energy (meV/atom: how good the
model's minimum is), the RMSD of the end positions (Å) and steps; structures/s of the batched
relaxation (after a warm-up). ``--sanity DIR`` (the datasets folder) also trains each model on
the MPTrj-style and the OC22 sample (80/10/10 splits; their test errors as ``mlip-train``
scored them). Rows land in ``results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from accuracy_parity import ROOT, budget_overrides, score
from timing import merged

# the training recipe shared by the crystal runs and the sample rows: lr 0.005, E/F weights 1/100, no
# mid-epoch checkpoints or preemption handling, 32 captured batch sizes (CUDA graphs)
TRAINING = ["module.lr=0.005", "module.loss.energy_weight=1", "module.loss.forces_weight=100", "step_checkpoint=null",
            "preemption=null", "monitoring.val_parity=null", "trainer.enable_progress_bar=false",
            "module.cuda_graph_buckets=32"]
# the crystal sets: batches filled to an edge budget (``--max-edges``; batches of 16 random 4-128-atom
# cells fall into ~50 padded sizes an epoch, and recapturing them cost nearly every step), stress weight 10
RECIPE = ["data=extxyz", "data.reader={energy_key: energy, forces_key: forces, stress_key: stress, virial_key: null}",
          "data.val_fraction=0", "data.test_fraction=0", "data.val_batch_size=32",
          "module.loss.stress_weight=10", *TRAINING]
# family-width -> model overrides: MACE and TDN at hidden width C (C x 0e + C x 1o, ℓ ≤ 3 edges);
# Facet at C channels to ℓ = 2 with a grid MLP of 2C (facet-lean: to ℓ = 1); EScAIP (escaip-direct:
# direct forces) with C-wide tokens
MODELS = {}
for _c in (8, 16, 32, 64, 128):
    MODELS[f"mace-{_c}"] = ["model=mace", f"model.hidden_irreps={_c}x0e+{_c}x1o", "model.max_ell=3",
                            "model.correlation=3", "model.num_interactions=2", "model.r_max=5.0"]
    MODELS[f"tdn-{_c}"] = ["model=tdn", f"model.hidden_irreps={_c}x0e+{_c}x1o", "model.max_ell=3",
                           "model.num_interactions=2", "model.r_max=5.0", f"model.cp_rank={min(64, 2 * _c)}"]
    MODELS[f"facet-{_c}"] = ["model=facet", f"model.hidden_irreps={_c}x0e+{_c}x1o+{_c}x2e", "model.max_ell=3",
                             "model.num_interactions=2", "model.r_max=5.0", f"model.grid_hidden={2 * _c}"]
    # Facet with MACE's node features (ℓ ≤ 1): a convolution no wider than MACE's, the grid MLP
    # turning the ℓ ≤ 3 messages into products where MACE runs its symmetric contraction
    MODELS[f"facet-lean-{_c}"] = ["model=facet", f"model.hidden_irreps={_c}x0e+{_c}x1o", "model.max_ell=3",
                                  "model.num_interactions=2", "model.r_max=5.0", f"model.grid_hidden={2 * _c}"]
    for _direct in (False, True):  # EScAIP at C channels, C/16 heads (at least 2), 2 blocks, 64 slots
        MODELS[f"escaip{'-direct' if _direct else ''}-{_c}"] = [
            "model=escaip", f"model.channels={_c}", f"model.heads={max(2, _c // 16)}", "model.num_layers=2",
            "model.r_max=5.0", f"model.readout_mlp={_c}", f"model.direct_forces={str(_direct).lower()}"]


def prepare(counts: list[int], relaxations: int, held_out: int, out: Path, seed: int = 0, max_atoms: int = 128) -> None:
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mlip.data.crystals import ELEMENTS, make_crystals, make_relaxations

    workers = min(16, os.cpu_count() or 1)
    valid, test = (make_crystals(held_out, seed=seed + s, max_atoms=max_atoms, workers=workers) for s in (1000, 1001))
    relax = make_relaxations(relaxations, seed=seed + 2000, workers=workers)
    isolated = []
    for symbol in ELEMENTS:
        atom = Atoms(symbol, cell=np.eye(3) * 20.0, pbc=False)
        atom.calc = SinglePointCalculator(atom, energy=EMT().get_potential_energy(atom))
        isolated.append(atom)
    for n in counts:
        folder = out / f"emt_{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, structures in (("train", make_crystals(n, seed=seed, max_atoms=max_atoms, workers=workers)),
                                 ("valid", valid), ("test", test),
                                 ("relax", relax), ("e0", isolated)):
            tmp = folder / f".{name}.xyz.tmp"
            write(tmp, structures, format="extxyz")
            os.replace(tmp, folder / f"{name}.xyz")
        print(folder, {"train": n, "valid": held_out, "test": held_out, "relax": relaxations}, flush=True)


def mlip_command(folder: Path, run_dir: Path, model: str, seed: int, epochs: int, seconds: float | None,
                 device: str, max_edges: int = 40000) -> list[str]:
    return [sys.executable, "-m", "mlip.cli.train", *merged([
        *MODELS[model], *RECIPE, f"data.max_edges={max_edges}", "trainer=gpu" if device == "cuda" else "trainer=cpu",
        f"data.train_files=[{folder / 'train.xyz'}]", f"data.val_files=[{folder / 'valid.xyz'}]",
        f"data.test_files=[{folder / 'test.xyz'}]", f"data.e0s={folder / 'e0.xyz'}",
        *(["module.cuda_graphs=true"] if device == "cuda" else []), *budget_overrides(epochs, seconds),
        f"seed={seed}", f"hydra.run.dir={run_dir}"])]


def end_point_errors(end, reference) -> tuple[float, float]:
    """EMT's energy of a model's end structure ``end`` minus EMT's relaxed energy (eV/atom), and
    the RMSD (Å) of ``end``'s positions from ``reference``'s, each atom's to its nearest image."""
    from ase.calculators.emt import EMT

    end = end.copy()
    end.calc = EMT()
    gap = (end.get_potential_energy() - reference.info["relaxed_energy"]) / len(end)
    fractional = np.linalg.solve(reference.cell[:].T, (end.positions - reference.positions).T).T
    displacement = (fractional - np.round(fractional)) @ reference.cell[:]
    return float(gap), float(np.sqrt(np.mean(np.sum(displacement**2, axis=1))))


def relaxation_scores(model_file: Path, relax_file: Path, device: str, fmax: float = 0.01,
                      steps: int = 1000) -> dict[str, float]:
    """The relaxation task for one trained model (see the module docstring)."""
    import torch
    from ase.io import read

    from mlip.export import load_model
    from mlip.simulation.batched_fire import BatchedFIRE

    truth = read(relax_file, ":")
    starts = []
    for k, atoms in enumerate(truth):
        start = atoms.copy()
        start.positions = atoms.arrays["start_positions"]
        starts.append((k, f"{relax_file}:{k}", start))
    potential = load_model(model_file, device=device, dtype="float32").requires_grad_(False)
    fire = BatchedFIRE(potential, fmax, steps, max_structures=len(starts), max_atoms=1 << 20, skin=1.0)
    fire.run(starts[:4])  # warm-up
    start_time = time.perf_counter()
    results = fire.run(starts)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start_time
    energy_gap, rmsd = np.array([end_point_errors(result.atoms, reference) for result, reference in zip(results, truth)]).T
    return {"relax_structures_per_s": len(starts) / seconds,
            "relax_converged": sum(r.status == "converged" for r in results) / len(results),
            "relax_steps": float(np.mean([r.steps for r in results])),
            "emt_steps": float(np.mean([a.info["emt_steps"] for a in truth])),
            "relaxed_energy_error": 1000 * float(np.mean(np.abs(energy_gap))),
            "relaxed_rmsd": float(np.mean(rmsd)), "n_relax": len(results)}


SANITY = {  # the public-data samples (``--sanity DIR``: the datasets folder): name -> data overrides
    "mptrj_sample": lambda d: ["data=mptrj", f"data.train_files={d / 'mptrj_style' / 'oxides_mptrj_layout.json'}"],
    "oc22_sample": lambda d: ["data=extxyz", "data.format=ase_db",
                              "data.reader={energy_key: energy, forces_key: forces, stress_key: null, virial_key: null}",
                              f"data.train_files=[{d / 'oc22_style' / 'oxides.db'}]"],
}


def sanity_command(name: str, data_dir: Path, run_dir: Path, model: str, seed: int, epochs: int,
                   device: str) -> list[str]:
    """``mlip-train`` of ``model`` on a public-data sample, split 80/10/10, energy and forces only."""
    return [sys.executable, "-m", "mlip.cli.train", *merged([
        *MODELS[model], *SANITY[name](data_dir), "data.val_fraction=0.1", "data.test_fraction=0.1",
        "data.batch_size=8", "data.num_workers=0", *TRAINING, "module.loss.stress_weight=0",
        "trainer=gpu" if device == "cuda" else "trainer=cpu", *(["module.cuda_graphs=true"] if device == "cuda" else []),
        f"trainer.max_epochs={epochs}", f"seed={seed}", f"hydra.run.dir={run_dir}"])]


def run(args: argparse.Namespace) -> None:
    """Train every (set, model, seed) — ``--parallel`` at a time on the one GPU — then score each
    model alone (held-out errors, relaxations), so that relaxation throughput is never shared."""
    if args.seconds is not None and args.parallel > 1:
        raise SystemExit("--seconds: runs sharing a GPU cannot be compared at equal time; use --parallel 1")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    budget = f"e{args.epochs}" if args.seconds is None else f"s{args.seconds:g}"
    jobs = [(folder.name, model, seed, args.work / f"{folder.name}-{model}-{seed}-{budget}",
             mlip_command(folder.resolve(), args.work / f"{folder.name}-{model}-{seed}-{budget}", model, seed,
                          args.epochs, args.seconds, args.device, args.max_edges), folder)
            for folder in args.sets for model in args.models for seed in args.seeds]
    if args.sanity is not None:
        jobs += [(name, model, seed, args.work / f"{name}-{model}-{seed}-e{args.epochs}",
                  sanity_command(name, args.sanity.resolve(), args.work / f"{name}-{model}-{seed}-e{args.epochs}",
                                 model, seed, args.epochs, args.device), None)
                 for name in SANITY for model in args.models for seed in args.seeds]
    env = dict(os.environ, OMP_NUM_THREADS="2", WANDB_MODE="disabled")

    def train(job) -> dict:
        name, model, seed, run_dir, command, _ = job
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        row = {"set": name, "model": model, "seed": seed, "parallel": args.parallel,
               "wall_s": round(time.perf_counter() - start, 1)}
        if done.returncode != 0:
            row["error"] = f"training failed: {done.stderr[-1500:]}"
        return row

    with ThreadPoolExecutor(args.parallel) as pool:
        trained = list(pool.map(train, jobs))
    for row, (_, _, _, run_dir, _, folder) in zip(trained, jobs):
        if "error" not in row:
            try:
                row.update(training_seconds(run_dir))
                model_file = run_dir / "model.safetensors"
                if folder is None:  # a sample: its own test split, as mlip-train scored it
                    test = json.loads((run_dir / "test_metrics.json").read_text())
                    row.update(forces_rmse=1000 * test["test_forces_rmse"], energy_rmse=1000 * test["test_energy_rmse"])
                else:
                    row["n_train"] = int(folder.name.split("_")[-1])
                    row.update(score("mlip", str(model_file), str(folder / "test.xyz"), args.device))
                    row.update(relaxation_scores(model_file, folder / "relax.xyz", args.device))
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
                row["error"] = f"{type(exc).__name__}: {str(exc)[-600:]}"
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def training_seconds(run_dir: Path) -> dict[str, float]:
    """Epochs trained, seconds in training epochs (validation excluded) and from the fit's start to
    its end (set-up after the data, validation and graph captures included), from ``phase_times.json``."""
    phases = json.loads((run_dir / "phase_times.json").read_text())
    epochs = phases["epochs"]
    return {"epochs": len(epochs), "train_s": round(sum(e["train_s"] for e in epochs), 1),
            "fit_s": round(phases["fit_end"] - phases["fit_start"], 1)}


def pareto(rows: list[dict], cost: str, higher_is_better: bool = False) -> list[dict]:
    """The rows no other row beats on both force RMSE and ``cost`` (lower, or higher if so told)."""
    sign = -1.0 if higher_is_better else 1.0
    front = []
    for row in sorted(rows, key=lambda r: (sign * r[cost], r["forces_rmse"])):
        if not front or row["forces_rmse"] < front[-1]["forces_rmse"]:
            front.append(row)
    return front


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    done = [r for r in rows if "error" not in r and "relax_structures_per_s" in r]
    samples = [r for r in rows if "error" not in r and "relax_structures_per_s" not in r]
    lines = ["| set | model | seed | epochs | fit s | force RMSE meV/Å | energy RMSE meV/atom | relaxed E error "
             "meV/atom | end RMSD Å | relax steps (EMT) | converged | relaxations/s |", "|---" * 12 + "|"]
    for r in done:
        lines.append(f"| {r['set']} | {r['model']} | {r['seed']} | {r['epochs']} | {r['fit_s']:.0f} | "
                     f"{r['forces_rmse']:.1f} | {r['energy_rmse']:.2f} | {r['relaxed_energy_error']:.2f} | "
                     f"{r['relaxed_rmsd']:.3f} | {r['relax_steps']:.0f} ({r['emt_steps']:.0f}) | "
                     f"{r['relax_converged']:.0%} | {r['relax_structures_per_s']:.3g} |")
    if samples:
        lines += ["", "| sample | model | seed | epochs | fit s | force RMSE meV/Å | energy RMSE meV/atom |",
                  "|---" * 7 + "|"]
        lines += [f"| {r['set']} | {r['model']} | {r['seed']} | {r['epochs']} | {r['fit_s']:.0f} | "
                  f"{r['forces_rmse']:.1f} | {r['energy_rmse']:.2f} |" for r in samples]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['model']} | {r['seed']} | failed: {r['error'][-120:]!r} |")
    for name in sorted({r["set"] for r in done}):
        here = [r for r in done if r["set"] == name]
        for cost, higher, label, digits in (("fit_s", False, "training seconds", "{:.0f}"),
                                            ("relax_structures_per_s", True, "relaxations/s", "{:.3g}")):
            front = pareto(here, cost, higher)
            lines.append(f"\n{name}, Pareto front of force RMSE against {label}: "
                         + ", ".join(f"{r['model']} ({r['forces_rmse']:.1f} meV/Å, {digits.format(r[cost])})" for r in front))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--structures", nargs="+", type=int, default=[5000, 20000], help="training-set sizes")
    p.add_argument("--relaxations", type=int, default=256)
    p.add_argument("--held-out", type=int, default=500, help="structures in valid.xyz and in test.xyz")
    p.add_argument("--max-atoms", type=int, default=128, help="largest cell of the training and held-out sets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / ".crystals")
    p = sub.add_parser("run")
    p.add_argument("--sets", nargs="+", type=Path, required=True, help="folders written by prepare")
    p.add_argument("--models", nargs="+", default=["mace-64", "facet-64", "tdn-64"], choices=sorted(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seconds", type=float, help="train each run this many seconds (Lightning max_time) instead")
    p.add_argument("--max-edges", type=int, default=40000,
                   help="edges per training batch (40,000: about 16 cells of the 4-128-atom set)")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once on the GPU (equal epochs only)")
    p.add_argument("--sanity", type=Path, help="the datasets folder: also train on its MPTrj-style and OC22 samples")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/crystal_runs"))
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_crystals")
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.structures, args.relaxations, args.held_out, args.out, args.seed, args.max_atoms)
    elif args.command == "run":
        run(args)
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
