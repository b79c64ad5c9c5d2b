#!/usr/bin/env python
"""Accuracy at equal training wall-clock: models trained for the same seconds on 3BPA.

    python scripts/benchmark_accuracy.py --data-dir data/3bpa --seconds 120            # on the GPU machine
    python scripts/benchmark_accuracy.py --data-dir data/3bpa --seconds 20 --accelerator cpu
    python scripts/benchmark_accuracy.py --epochs 30 --parallel 6 \
        --variant facet-wide=facet:model.grid_hidden=256 --variant facet-z=facet:model.element_skip=true

Each model trains with `mlip-train` on 3BPA train_300K (the same split: 80% training,
10% validation, 10% held out) for ``--seconds`` of training (Lightning's ``max_time``,
which counts the whole fit loop including validation), then the EMA weights of its
best checkpoint are scored on the held-out 10%: force RMSE (meV/Å) and energy MAE
(meV/atom). The models are MACE and Facet of the same width (``--channels``), edge
harmonics to ℓ = 3, both at the learning rate ``--lr`` (0.03 was the best of 0.01, 0.02
and 0.03 for both). ``--variant name=model:key=value,key=value`` adds a model with
overrides (later keys win).

``--epochs`` trains a fixed number of epochs instead (accuracy per epoch, for sweeps),
and ``--parallel`` runs that many trainings at once on the one GPU; their wall-clock
then measures nothing, so equal-time comparisons run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from timing import merged, mlip_train

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mace": lambda channels: ["model=mace", "model.correlation=3", "model.radial_mlp=[64,64,64]"],
    # Facet as tuned on this set (30-epoch sweeps, docs/performance.md): hidden features to ℓ = 2
    # and a grid MLP twice as wide as the channels
    "facet": lambda channels: ["model=facet", "model.spline_basis=16", "model.grid_resolution=6",
                               f"model.hidden_irreps={channels}x0e+{channels}x1o+{channels}x2e",
                               f"model.grid_hidden={2 * channels}"],
}


def parse_variant(text: str) -> tuple[str, tuple[str, list[str]]]:
    """``name=model:key=value,key=value`` -> (name, (model, these overrides))."""
    name, _, spec = text.partition("=")
    base, _, extra = spec.partition(":")
    if not name or base not in MODELS:
        raise SystemExit(f"--variant {text!r}: expected name=model:key=value,... with model one of {list(MODELS)}")
    return name, (base, [item for item in re.split(r",(?![^\[]*\])", extra) if item])  # not inside [..]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "3bpa")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variant", action="append", default=[], help="name=model:key=value,... (repeatable)")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of --seconds")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (with --epochs)")
    parser.add_argument("--channels", type=int, default=64, help="MACE 0e+1o, Facet 0e+1o+2e")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_accuracy")
    args = parser.parse_args()
    if args.parallel > 1 and args.epochs is None:
        raise SystemExit("--parallel needs --epochs: trainings that share the GPU cannot be compared at equal time")
    runs = {name: (name, []) for name in args.models} | dict(parse_variant(v) for v in args.variant)
    if args.epochs is not None:
        budget, label = [f"trainer.max_epochs={args.epochs}"], f"{args.epochs} epochs"
    else:
        minutes, seconds = divmod(args.seconds, 60)
        hours, minutes = divmod(minutes, 60)
        max_time = f"{hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{seconds:02d}"  # Lightning's DD:HH:MM:SS
        budget, label = ["trainer.max_epochs=100000", f"+trainer.max_time={max_time}"], f"{args.seconds} s of training"
    threads = str(max(1, (os.cpu_count() or 1) // args.parallel))

    def train(name: str) -> dict:
        base, extra = runs[name]
        overrides = merged([
            "data=3bpa", "module.loss.stress_weight=0", f"data.batch_size={args.batch}", "data.val_batch_size=32",
            f"model.hidden_irreps={args.channels}x0e+{args.channels}x1o", f"module.lr={args.lr}",
            "model.max_ell=3", "model.r_max=5.0",
            "trainer=gpu", f"trainer.accelerator={args.accelerator}", *budget,
            "step_checkpoint=null", "preemption=null", "monitoring.val_parity=null", "trainer.enable_progress_bar=false",
            *MODELS[base](args.channels), *extra,
        ])
        env = {"MLIP_3BPA_DIR": str(args.data_dir.resolve()), "OMP_NUM_THREADS": threads}
        wall, rows, test = mlip_train(args.out / name, overrides, env)
        epochs = max(int(r["epoch"]) for r in rows if r.get("val_loss")) + 1  # validated epochs (the test row has one more)
        print(f"{name}: {epochs} epochs, {wall:.0f} s, test force RMSE {1000 * test['test_forces_rmse']:.1f} meV/Å",
              flush=True)
        return {"epochs": epochs, "wall_s": wall, "model": base, "overrides": extra, **test}

    with ThreadPoolExecutor(args.parallel) as pool:
        results = dict(zip(runs, pool.map(train, runs)))
    print(f"\n3BPA train_300K, {label} each, {args.channels} channels, lr {args.lr}, edge ℓ ≤ 3, held-out 10%\n")
    print("| model | epochs | wall s | test force RMSE (meV/Å) | test force MAE (meV/Å) | test energy MAE (meV/atom) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['epochs']} | {r['wall_s']:.0f} | {1000 * r['test_forces_rmse']:.1f} | "
              f"{1000 * r['test_forces_mae']:.1f} | {1000 * r['test_energy_mae']:.2f} |")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
