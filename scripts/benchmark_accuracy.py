#!/usr/bin/env python
"""Accuracy at equal training wall-clock: models trained for the same seconds on 3BPA.

    python scripts/benchmark_accuracy.py --data-dir data/3bpa --seconds 120            # on the GPU machine
    python scripts/benchmark_accuracy.py --data-dir data/3bpa --seconds 20 --accelerator cpu

Each model trains with `mlip-train` on 3BPA train_300K (the same split: 80% training,
10% validation, 10% held out) for ``--seconds`` of training (Lightning's ``max_time``,
which counts the whole fit loop including validation), then the EMA weights of its
best checkpoint are scored on the held-out 10%: force RMSE (meV/Å) and energy MAE
(meV/atom). The models are MACE and Facet of the same width (``--hidden``), edge
harmonics to ℓ = 3.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from timing import mlip_train

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mace": ["model=mace", "model.correlation=3", "model.radial_mlp=[64,64,64]"],
    "facet": ["model=facet", "model.spline_basis=16", "model.grid_resolution=6"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "3bpa")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--hidden", default="64x0e+64x1o")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_accuracy")
    args = parser.parse_args()
    minutes, seconds = divmod(args.seconds, 60)
    hours, minutes = divmod(minutes, 60)
    max_time = f"{hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{seconds:02d}"  # Lightning's DD:HH:MM:SS
    results = {}
    for name in args.models:
        overrides = MODELS[name] + [
            "data=3bpa", "module.loss.stress_weight=0", f"data.batch_size={args.batch}", "data.val_batch_size=32",
            f"model.hidden_irreps={args.hidden}", "model.max_ell=3", "model.r_max=5.0",
            "trainer=gpu", f"trainer.accelerator={args.accelerator}", "trainer.max_epochs=100000",
            f"+trainer.max_time={max_time}", "step_checkpoint=null", "preemption=null",
            "monitoring.val_parity=null", "trainer.enable_progress_bar=false",
        ]
        wall, rows, test = mlip_train(args.out / name, overrides, {"MLIP_3BPA_DIR": str(args.data_dir.resolve())})
        epochs = max(int(r["epoch"]) for r in rows if r.get("epoch")) + 1
        results[name] = {"epochs": epochs, "wall_s": wall, **test}
        print(f"{name}: {epochs} epochs, test force RMSE {1000 * test['test_forces_rmse']:.1f} meV/Å", flush=True)
    print(f"\n3BPA train_300K, {args.seconds} s of training each, {args.hidden}, ℓ ≤ 3, held-out 10%\n")
    print("| model | epochs | test force RMSE (meV/Å) | test force MAE (meV/Å) | test energy MAE (meV/atom) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epochs']} | {1000 * r['test_forces_rmse']:.1f} | {1000 * r['test_forces_mae']:.1f} | "
              f"{1000 * r['test_energy_mae']:.2f} |")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
