#!/usr/bin/env python
"""Does training scale over GPUs (DDP), and do N GPUs learn what one does?

    python scripts/benchmark_ddp.py --gpus 2 --data-dir data/3bpa           # on a node with 2 GPUs
    python scripts/benchmark_ddp.py --gpus 2 --accelerator cpu --epochs 1   # a quick check of the script
    python scripts/benchmark_ddp.py --gpus 2 4 --data emt --batch 32 --hidden 128x0e+128x1o --cuda-graphs
                                                                            # GPU-bound periodic cells, 1, 2 and 4 GPUs

`mlip-train` runs on one data set (the same split, seed and model): ``--data 3bpa``, 3BPA
train_300K (molecules of 27 atoms: host-bound at small batches), or ``--data emt``, the
embedded EMT Cu/Au/Ni set (`mlip.data.emt`: periodic bulk cells, slabs and clusters),
``--structures`` of them, which keeps a GPU busy at larger batches. For each N in ``--gpus``:

- 1 GPU, batch B (once);
- N GPUs, batch B/N each: the same global batches, so the same training up to the order
  in which the ranks' gradients are summed; its validation errors must agree with the first;
- N GPUs, batch B each (weak scaling): what N GPUs buy at a fixed per-GPU batch; its
  efficiency is its throughput over N times the 1-GPU run's.

Throughput is training structures per second after ``--skip-epochs`` warm-up epochs: the
steps' structures over the epochs' training seconds (rank 0's ``phase_times.json``:
Lightning's loop, data loading and gradient all-reduce included, validation excluded; the
ranks step in lock-step, each waiting for the all-reduce), with steps logged only every 50
(a logged step reads the GPU). With ``--cuda-graphs`` that mean includes the epochs that
captured a new padded size (seconds each, the first time a size is met; the table lists
them), so the table also gives a steady-state efficiency from the epochs without a capture:
the 1-GPU run's median seconds per step over the N-GPU run's at the same per-GPU batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from timing import mlip_train

ROOT = Path(__file__).resolve().parents[1]


def train(run_dir: Path, data_dir: Path, devices: int, batch: int, args) -> dict:
    if args.data == "emt":
        data, env = ["data=emt", f"data.train_files.n_structures={args.structures}"], {"MLIP_DATA_DIR": str(data_dir)}
    else:
        data, env = ["data=3bpa"], {"MLIP_3BPA_DIR": str(data_dir)}
    overrides = [
        *data, "module.loss.stress_weight=0", f"data.batch_size={batch}", "data.val_batch_size=32",
        f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", "step_checkpoint=null", "preemption=null",
        "monitoring.val_parity=null", "trainer.log_every_n_steps=50", "trainer.enable_progress_bar=false",
        f"model.hidden_irreps={args.hidden}", "model.max_ell=3",
        "trainer=ddp" if devices > 1 else "trainer=gpu", f"trainer.devices={devices}",
        f"trainer.accelerator={args.accelerator}", f"module.cuda_graphs={str(args.cuda_graphs).lower()}",
        f"module.cuda_graph_buckets={args.graph_buckets}",
    ]
    wall, rows, test = mlip_train(run_dir, overrides, env)
    epochs = json.loads((run_dir / "phase_times.json").read_text())["epochs"]
    timed = [e for e in epochs if e["epoch"] >= args.skip_epochs]
    # steady: epochs that captured no new padded size (a capture costs seconds, once per size)
    steady = [e for e in timed if not e.get("graph_captures")] or timed
    shutil.copy(run_dir / "logs" / "metrics.csv", run_dir.parent / f"{run_dir.name}_metrics.csv")
    val = [r for r in rows if r.get("val_forces_rmse")][-1]
    return {
        "graph_captures": sum(e.get("graph_captures", 0) for e in epochs),
        "graph_capture_s": sum(e.get("graph_capture_s", 0.0) for e in epochs),
        # each step counted as a full batch on every rank (an epoch's last batch may be short)
        "structures_per_s": devices * batch * sum(e["steps"] for e in timed) / sum(e["train_s"] for e in timed),
        "median_step_ms": float(1000 * np.median([e["train_s"] / e["steps"] for e in steady])),
        "steady_epochs": len(steady),
        "wall_s": wall,
        "val_energy_mae": float(val["val_energy_mae"]),
        "val_forces_rmse": float(val["val_forces_rmse"]),
        "test": test,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[2], help="GPU counts N beside the 1-GPU run")
    parser.add_argument("--data", choices=("3bpa", "emt"), default="3bpa")
    parser.add_argument("--data-dir", type=Path, help="3BPA's folder (default data/3bpa), or where the EMT set is "
                        "generated (default data)")
    parser.add_argument("--structures", type=int, default=2000, help="EMT structures generated (--data emt)")
    parser.add_argument("--batch", type=int, default=16, help="global batch of the 1-GPU run")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--hidden", default="64x0e+64x1o")
    parser.add_argument("--skip-epochs", type=int, default=1, help="warm-up epochs left out of the throughput")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the steps from CUDA graphs (the loss divides by the global batch's counts)")
    parser.add_argument("--graph-buckets", type=int, default=32,
                        help="captured sizes kept (module.cuda_graph_buckets): the EMT cells' batches span about "
                             "20 padded sizes at batch 32 and 10 at batch 64; sizes dropped are captured again")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_ddp")
    args = parser.parse_args()
    data_dir = args.data_dir or (ROOT / "data" / "3bpa" if args.data == "3bpa" else ROOT / "data")
    runs = [(f"1 GPU, batch {args.batch}", 1, args.batch, None)]
    for n in args.gpus:
        # the weak run first: its padded sizes are the 1-GPU run's, whose kernels and captures it reuses
        runs += [(f"{n} GPUs, batch {args.batch} each", n, args.batch, "weak"),
                 (f"{n} GPUs, batch {args.batch // n} each (same global batch)", n, args.batch // n, "same")]
    results = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for k, (name, devices, batch, _) in enumerate(runs):
        try:
            results[name] = train(args.out / f"run{k}", data_dir.resolve(), devices, batch, args)
        except SystemExit as failed:  # a failed run is reported and the others still run
            (args.out / f"run{k}_error.txt").write_text(str(failed))
            results[name] = {"error": str(failed)[-3000:]}
        print(f"{name}: {json.dumps(results[name])}", flush=True)  # each as it ends: a run cut short keeps them
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    base = results[runs[0][0]]
    if "error" in base:
        raise SystemExit(f"the 1-GPU run failed:\n{base['error']}")
    print(f"\n{args.epochs} epochs of {args.data}, model {args.hidden}, ℓ ≤ 3\n")
    print("| run | structures/s | vs 1 GPU | weak-scaling efficiency | median step (ms) | steady efficiency "
          "| graph captures (s) | val energy MAE (meV/atom) | val force RMSE (meV/Å) | test force RMSE (meV/Å) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, (name, devices, _, kind) in enumerate(runs):
        r = results[name]
        if "error" in r:
            print(f"| {name} | failed: run{k}_error.txt |" + " |" * 8)
            continue
        speedup = r["structures_per_s"] / base["structures_per_s"]
        efficiency = f"{speedup / devices:.0%}" if kind == "weak" else ""
        # the same per-GPU batch: a step of N GPUs as fast as one GPU's is 100% (captures and
        # other slow steps out of the median)
        steady = f"{base['median_step_ms'] / r['median_step_ms']:.0%}" if kind == "weak" else ""
        r["speedup"] = speedup
        print(f"| {name} | {r['structures_per_s']:.1f} | {speedup:.2f}x | {efficiency} | {r['median_step_ms']:.1f} | "
              f"{steady} | {r['graph_captures']} ({r['graph_capture_s']:.0f}) | {1000 * r['val_energy_mae']:.3f} | "
              f"{1000 * r['val_forces_rmse']:.3f} | {1000 * r['test']['test_forces_rmse']:.3f} |")
    for name, devices, _, kind in runs:
        if kind == "same" and "error" not in results[name]:
            same = results[name]["test"]["test_forces_rmse"]
            gap = abs(same - base["test"]["test_forces_rmse"]) / base["test"]["test_forces_rmse"]
            print(f"same global batch on {devices} GPUs vs 1 GPU: test force RMSE differs by {gap:.1e} (relative)")


if __name__ == "__main__":
    main()
