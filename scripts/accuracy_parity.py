#!/usr/bin/env python
"""How accurate are our potentials on held-out molecules, against mace-torch's on the same data?

Same model, data, split and epochs on both sides (or ours at equal training seconds):

    python scripts/accuracy_parity.py prepare --data-dir ../shared/datasets --out .accuracy_data
    python scripts/accuracy_parity.py run --sets .accuracy_data --epochs 40 --seeds 0 1 2 \
        --recipes mlip-v1 mlip --mace-torch /tmp/site_mace:/tmp/site --gpus 0 1 --out $OUT
    python scripts/accuracy_parity.py table $OUT/results.jsonl
    python scripts/accuracy_parity.py compare docs/accuracy_runs.jsonl --ours mlip-v4:9-20 --reference mace-torch:9-20
    python scripts/accuracy_parity.py run --recipes mlip facet --variant facet-wide=facet:model.grid_hidden=256 \
        --seconds 120 --set-names 3bpa_random --gpus 0          # model families at equal wall-clock

Three held-out sets (``prepare``): ``3bpa_random`` (3BPA train_300K, random 400/50/50:
in distribution), ``3bpa_energy`` (the 400 lowest-energy configurations train and validate,
the 100 highest are the test: energy extrapolation) and ``acac`` (acetylacetone train_300K
450/50, tested on test_MD_300K). Every framework trains on the same files.

The model is the benchmark MACE: 128x0e+128x1o, edge ℓ ≤ 3, ν = 3, 2 layers, r_max 5 Å,
8 Bessel functions, radial MLP [64, 64, 64], readout MLP 16; batch 10, lr 0.01, AMSGrad,
EMA 0.99, per-atom energy weight 1, force weight 100. Ours trains through `mlip-train`
under the named recipes (`RECIPES`); mace-torch through ``mace.cli.run_train``
(ScaleShiftMACE) in its own environment (``--mace-torch`` is its PYTHONPATH). Each
framework's final model is scored through its own ASE calculator by one scoring function:
force RMSE and MAE over all components (meV/Å), energy RMSE per atom (meV/atom).
Runs go at once, spread over ``--gpus`` (with ``--seconds``, one run per GPU at a time);
each result is appended to ``results.jsonl`` as soon as it is known.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from timing import merged

ROOT = Path(__file__).resolve().parents[1]
EPOCHS_DEFAULT = 40
# mace-torch's parameter groups with weight decay: the interactions' output linears and the products
MACE_DECAY = "['^model.interactions.*.linear.weight$','^model.products.*.(contraction|linear).']"
MACE_RECIPE = [
    "module.plateau_factor=0.8", "module.plateau_patience=50", "module.warmup_steps=0",
    "module.weight_decay=5e-7", f"module.weight_decay_params={MACE_DECAY}", "model.radial_fan_in_forward=true",
    "model.contraction_normalization=component", "model.contraction_parametrization=coupling",
]
RECIPES = {
    "mlip": [],  # the shipped defaults (train.yaml, model/mace.yaml), whatever they are now
    # the defaults before issue 18: aggressive plateau, warm-up, no decay, radial weights scaled at init
    "mlip-v1": ["module.plateau_factor=0.5", "module.plateau_patience=4", "module.warmup_steps=20",
                "module.weight_decay=0.0", "model.radial_fan_in_forward=false", "model.contraction_normalization=norm",
                "model.contraction_parametrization=orthonormal"],
    # all of mace-torch's choices but its product parametrisation (the first parity runs, 2026-11-28)
    "mace-recipe": MACE_RECIPE[:7] + ["model.contraction_parametrization=orthonormal"],
    "mace-recipe+coupling": MACE_RECIPE,  # all of them
}
# single changes from mlip-v1 (the ablation rows)
for _name, _change in {"+scheduler": MACE_RECIPE[:2], "+no-warmup": MACE_RECIPE[2:3], "+decay": MACE_RECIPE[3:5],
                       "+radial-fan-in": MACE_RECIPE[5:6], "+component": MACE_RECIPE[6:7],
                       "+coupling": MACE_RECIPE[7:]}.items():
    RECIPES[f"mlip-v1{_name}"] = RECIPES["mlip-v1"] + _change
# mace-torch's recipe without the component normalisation (the first parity run, 2026-11-28)
RECIPES["mace-recipe-norm"] = RECIPES["mace-recipe"][:6] + ["model.contraction_normalization=norm"]
# our plateau schedule with mace-torch's parametrisation (radial MLP, contraction normalisation) and decay
RECIPES["mlip-v2"] = RECIPES["mlip-v1"] + MACE_RECIPE[3:7]
# ... and its parametrisation of the product on the coupling chains
RECIPES["mlip-v3"] = RECIPES["mlip-v2"] + MACE_RECIPE[7:]
# single changes from mlip-v3
RECIPES["mlip-v3-decay"] = RECIPES["mlip-v3"] + ["module.weight_decay=0.0"]
RECIPES["mlip-v3-warmup"] = RECIPES["mlip-v3"] + ["module.warmup_steps=0"]
# the shipped recipe with another numerical path: float64 weights and data; e3nn's tensor products (not cueq)
RECIPES["mlip-float64"] = ["dtype=float64"]
RECIPES["mlip-e3nn"] = ["model.tp_backend=e3nn"]
# mace-torch's second stage (its --swa), on both sides (`--mace-stage-two` adds mace-torch's rows):
# energy weight 1000, force weight 100, lr 1e-3 from three quarters of the epochs (@start)
STAGE_TWO = {"energy_weight": 1000.0, "forces_weight": 100.0, "lr": 1.0e-3}
RECIPES["mlip-stage-two"] = ["stage_two={_target_: mlip.training.stage_two.StageTwo, start_epoch: @start, "
                             + ", ".join(f"{k}: {v}" for k, v in STAGE_TWO.items()) + "}"]
# the other model families under the shipped recipe (model overrides in MODELS)
MODELS = {
    "mace": ["model=mace", "model.hidden_irreps=128x0e+128x1o", "model.max_ell=3", "model.correlation=3",
             "model.num_interactions=2", "model.r_max=5.0", "model.num_bessel=8", "model.radial_mlp=[64,64,64]",
             "model.readout_mlp=16"],
    "tdn": ["model=tdn", "model.hidden_irreps=128x0e+128x1o", "model.max_ell=3", "model.correlation=3",
            "model.num_interactions=2", "model.r_max=5.0", "model.num_bessel=8", "model.radial_mlp=[64,64,64]",
            "model.readout_mlp=16", "model.cp_rank=64"],
    # Facet as tuned on 3BPA (docs/performance.md): hidden features to ℓ = 2, grid MLP twice the channels
    "facet": ["model=facet", "model.hidden_irreps=64x0e+64x1o+64x2e", "model.max_ell=3", "model.num_interactions=2",
              "model.r_max=5.0", "model.spline_basis=16", "model.grid_resolution=6", "model.grid_hidden=128",
              "model.readout_mlp=16"],
    # Facet with MACE's node features (ℓ ≤ 1, 128 channels): a convolution no wider than MACE's
    "facet-lean": ["model=facet", "model.hidden_irreps=128x0e+128x1o", "model.max_ell=3", "model.num_interactions=2",
                   "model.r_max=5.0", "model.spline_basis=16", "model.grid_resolution=6", "model.grid_hidden=256",
                   "model.readout_mlp=16"],
    # EScAIP at the same width (8 heads, 2 blocks, 64 neighbour slots); escaip-direct: direct forces
    "escaip": ["model=escaip", "model.channels=128", "model.heads=8", "model.num_layers=2", "model.r_max=5.0",
               "model.max_neighbors=64", "model.readout_mlp=64", "model.direct_forces=false"],
    "escaip-direct": ["model=escaip", "model.channels=128", "model.heads=8", "model.num_layers=2", "model.r_max=5.0",
                      "model.max_neighbors=64", "model.readout_mlp=64", "model.direct_forces=true"],
}
RECIPES["tdn"] = []
RECIPES["facet"] = []
RECIPES["facet-lean"] = []
RECIPES["escaip"] = []
RECIPES["escaip-direct"] = []


VARIANT_BASE: dict[str, str] = {}  # --variant name -> the recipe it extends


def recipe_model(recipe: str) -> str:
    recipe = VARIANT_BASE.get(recipe, recipe)
    return recipe if recipe in MODELS else "mace"


def add_variant(text: str) -> str:
    """``name=recipe:key=value,key=value`` -> a recipe ``name``: ``recipe``'s overrides, then these
    (later keys win). E.g. ``facet-wide=facet:model.grid_hidden=256``."""
    name, _, spec = text.partition("=")
    base, _, extra = spec.partition(":")
    if not name or base not in RECIPES:
        raise SystemExit(f"--variant {text!r}: expected name=recipe:key=value,... with recipe one of {list(RECIPES)}")
    RECIPES[name] = RECIPES[base] + [item for item in re.split(r",(?![^\[]*\])", extra) if item]  # not inside [..]
    VARIANT_BASE[name] = base
    return name


def budget_overrides(epochs: int, seconds: float | None) -> list[str]:
    """A fixed number of epochs, or ``seconds`` of training (Lightning's ``max_time``, DD:HH:MM:SS,
    which counts the whole fit loop, validation included)."""
    if seconds is None:
        return [f"trainer.max_epochs={epochs}"]
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return ["trainer.max_epochs=100000", f"+trainer.max_time={hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{secs:02d}"]


SETS = ("3bpa_random", "3bpa_energy", "acac")


def stage_two_start(epochs: int) -> int:
    """mace-torch's default first epoch of stage two: three quarters of the run."""
    return max(1, epochs // 4 * 3)


def prepare(data_dir: Path, out: Path) -> None:
    """Write train/valid/test extxyz files and the E0 file of each set into ``out/<set>/``."""
    from ase.io import read, write

    rng = np.random.default_rng(0)
    bpa = read(data_dir / "3bpa" / "train_300K.xyz", ":")
    order = rng.permutation(len(bpa))
    splits = {"3bpa_random": (order[:400], order[400:450], order[450:])}
    by_energy = np.argsort([a.get_potential_energy() for a in bpa])
    low = rng.permutation(by_energy[:400])
    splits["3bpa_energy"] = (low[:360], low[360:], by_energy[400:])
    for name, (train, valid, test) in splits.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for part, index in (("train", train), ("valid", valid), ("test", test)):
            write(folder / f"{part}.xyz", [bpa[i] for i in index])
        write(folder / "e0.xyz", read(data_dir / "3bpa" / "iso_atoms.xyz", ":"))
    acac = read(data_dir / "acac" / "train_300K.xyz", ":")
    order = rng.permutation(len(acac))
    folder = out / "acac"
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "train.xyz", [acac[i] for i in order[:450]])
    write(folder / "valid.xyz", [acac[i] for i in order[450:]])
    write(folder / "test.xyz", read(data_dir / "acac" / "test_MD_300K.xyz", ":"))
    write(folder / "e0.xyz", read(data_dir / "acac" / "isolated_atoms.xyz", ":"))
    for name in SETS:
        counts = {p: len(read(out / name / f"{p}.xyz", ":")) for p in ("train", "valid", "test")}
        print(name, counts)


def score(framework: str, model: str, test: str, device: str, head: str | None = None) -> dict[str, float]:
    """Force RMSE/MAE (meV/Å), energy RMSE and mean error (meV/atom) of ``model`` (its ``head``,
    if it has several) on ``test`` through its calculator."""
    from ase.io import read

    if framework == "mlip":
        from mlip.calculator import MLIPCalculator

        calc = MLIPCalculator(model, device=device, dtype="float64", head=head)
    else:
        from mace.calculators import MACECalculator

        calc = MACECalculator(model_paths=model, device=device, default_dtype="float64",
                              **({"head": head} if head else {}))
    force_errors, energy_errors = [], []
    for atoms in read(test, ":"):
        reference_e, reference_f = atoms.get_potential_energy(), atoms.get_forces()
        atoms = atoms.copy()
        atoms.calc = calc
        energy_errors.append((atoms.get_potential_energy() - reference_e) / len(atoms))
        force_errors.append((atoms.get_forces() - reference_f).ravel())
    f, e = np.concatenate(force_errors), np.asarray(energy_errors)
    return {"forces_rmse": 1000 * float(np.sqrt(np.mean(f**2))), "forces_mae": 1000 * float(np.mean(np.abs(f))),
            "energy_rmse": 1000 * float(np.sqrt(np.mean(e**2))), "energy_mean_error": 1000 * float(np.mean(e)),
            "n_test": len(e)}


def e0_dict(path: Path) -> dict[int, float]:
    from ase.io import read

    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(path, ":")}


def mlip_command(folder: Path, run_dir: Path, recipe: str, seed: int, epochs: int, extra: tuple[str, ...] = (
        "monitoring.val_parity=null",), seconds: float | None = None) -> list[str]:
    """`mlip-train` on ``folder``'s files with the issue's settings, the recipe's overrides and ``extra``."""
    return [sys.executable, "-m", "mlip.cli.train", *merged([*MODELS[recipe_model(recipe)], "data=extxyz", "trainer=gpu",
            f"data.train_files=[{folder / 'train.xyz'}]", f"data.val_files=[{folder / 'valid.xyz'}]",
            f"data.test_files=[{folder / 'test.xyz'}]", "data.val_fraction=0", "data.test_fraction=0",
            "data.reader={energy_key: energy, forces_key: forces, stress_key: null, virial_key: null}",
            f"data.e0s={folder / 'e0.xyz'}", "data.batch_size=10", "data.val_batch_size=10", "module.lr=0.01", "module.amsgrad=true", "module.ema_decay=0.99", "module.loss.energy_weight=1",
            "module.loss.forces_weight=100", "module.loss.stress_weight=0", "module.cuda_graphs=true",
            *budget_overrides(epochs, seconds), "step_checkpoint=null", "preemption=null",
            "trainer.enable_progress_bar=false", f"seed={seed}",
            *(o.replace("@start", str(stage_two_start(epochs))) for o in RECIPES[recipe]), *extra,
            f"hydra.run.dir={run_dir}"])]


def mace_command(folder: Path, run_dir: Path, seed: int, epochs: int, stage_two: bool = False) -> list[str]:
    """``mace_run_train`` with the same settings (``stage_two``: and its --swa, as `STAGE_TWO`)."""
    swa = ["--swa", f"--start_swa={stage_two_start(epochs)}", f"--swa_energy_weight={STAGE_TWO['energy_weight']}",
           f"--swa_forces_weight={STAGE_TWO['forces_weight']}", f"--swa_lr={STAGE_TWO['lr']}"] if stage_two else []
    return [sys.executable, "-m", "mace.cli.run_train", "--name", "mace", f"--seed={seed}",
            f"--work_dir={run_dir}", f"--train_file={folder / 'train.xyz'}", f"--valid_file={folder / 'valid.xyz'}",
            f"--E0s={e0_dict(folder / 'e0.xyz')!r}", "--model=ScaleShiftMACE",
            "--hidden_irreps=128x0e+128x1o", "--r_max=5.0", "--max_ell=3", "--correlation=3", "--num_interactions=2",
            "--num_radial_basis=8", "--MLP_irreps=16x0e", "--radial_MLP=[64,64,64]", "--batch_size=10",
            "--valid_batch_size=10", f"--max_num_epochs={epochs}", "--lr=0.01", "--amsgrad", "--ema",
            "--ema_decay=0.99", "--loss=weighted", "--energy_weight=1", "--forces_weight=100",
            "--energy_key=energy", "--forces_key=forces", "--device=cuda", "--default_dtype=float32",
            "--eval_interval=1", "--save_cpu", *swa]


def trained_epochs(run_dir: Path) -> int:
    """Epochs a run validated (its ``logs/metrics.csv``; the test row has one more)."""
    import csv

    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        return max(int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val_loss")) + 1


def run(args: argparse.Namespace) -> None:
    if args.seconds is not None and args.mace_torch:
        raise SystemExit("--seconds: mace_run_train has no wall-clock budget; compare with mace-torch at equal --epochs")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    jobs = [(s, r, seed) for s in args.set_names for r in args.recipes for seed in args.seeds]
    if args.mace_torch:
        jobs += [(s, "mace-torch", seed) for s in args.set_names for seed in args.seeds]
        if args.mace_stage_two:
            jobs += [(s, "mace-torch-stage-two", seed) for s in args.set_names for seed in args.seeds]
    deadline = time.time() + args.budget_s

    free_gpus: queue.Queue[int] = queue.Queue()  # with --seconds: a run takes a GPU to itself
    for gpu in args.gpus:
        free_gpus.put(gpu)

    def one(index_job) -> None:
        if args.seconds is not None:
            gpu = free_gpus.get()
            try:
                return run_job(index_job, gpu)
            finally:
                free_gpus.put(gpu)
        return run_job(index_job, args.gpus[index_job[0] % len(args.gpus)])

    def run_job(index_job, gpu: int) -> None:
        index, (name, recipe, seed) = index_job
        folder = args.sets.resolve() / name
        budget = f"e{args.epochs}" if args.seconds is None else f"s{args.seconds:g}"
        run_dir = args.work / f"{name}-{recipe}-{seed}-{budget}"
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), OMP_NUM_THREADS="2", WANDB_MODE="disabled")
        if recipe.startswith("mace-torch"):
            env.update(PYTHONPATH=args.mace_torch, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
            stage_two = recipe == "mace-torch-stage-two"
            command, framework = mace_command(folder, run_dir, seed, args.epochs, stage_two), "mace"
            model = run_dir / ("mace_stagetwo.model" if stage_two else "mace.model")
        else:
            command, framework = mlip_command(folder, run_dir, recipe, seed, args.epochs, seconds=args.seconds), "mlip"
            model = run_dir / "model.safetensors"
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=max(deadline - time.time(), 1))
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-1500:])
            scored = subprocess.run([sys.executable, __file__, "score", framework, str(model), str(folder / "test.xyz")],
                                    cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=max(deadline + 60 - time.time(), 1))
            if scored.returncode != 0:
                raise RuntimeError(scored.stderr[-1500:])
            epochs = args.epochs if args.seconds is None else trained_epochs(run_dir)
            row = {"set": name, "recipe": recipe, "seed": seed, "epochs": epochs, "wall_s": round(wall, 1),
                   **({"seconds": args.seconds} if args.seconds is not None else {}),
                   **json.loads(scored.stdout.strip().splitlines()[-1])}
        except Exception as exc:  # noqa: BLE001 - a failed or unfinished run is reported, the others go on
            row = {"set": name, "recipe": recipe, "seed": seed, "error": f"{type(exc).__name__}: {str(exc)[-600:]}"}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    with ThreadPoolExecutor(len(args.gpus) if args.seconds is not None else len(jobs)) as pool:
        list(pool.map(one, enumerate(jobs)))


def seed_ranges(seeds) -> str:
    """[0, 1, 2, 6, 7] -> "0-2, 6-7"."""
    seeds, parts = sorted(seeds), []
    for seed in seeds:
        if parts and seed == parts[-1][1] + 1:
            parts[-1][1] = seed
        else:
            parts.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def parse_seeds(spec: str) -> set[int]:
    """"0-2,6-8" or "9,10" -> the seeds."""
    seeds = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        seeds |= set(range(int(low), int(high or low) + 1))
    return seeds


def table(path: Path) -> str:
    """Mean ± spread (half the range) over seeds, per set, recipe and batch of runs launched
    together (``batch``, 1 where a row has none), labelled by its seeds and date; a batch that
    repeats seeds an earlier batch of the same recipe ran is marked as a repeat. Markdown."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    groups: dict[tuple[str, int, str, int], list[dict]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["set"], row["epochs"], row["recipe"], row.get("batch", 1)), []).append(row)
    lines = ["| set | recipe | seeds | date | epochs | force RMSE meV/Å | force MAE meV/Å | energy RMSE meV/atom "
             "| wall s |", "|---|---|---|---|---|---|---|---|---|"]

    def stat(values: list[float], digits: int) -> str:
        v = np.asarray(values)
        return f"{v.mean():.{digits}f} ± {(v.max() - v.min()) / 2:.{digits}f}"

    seen: set[tuple[str, int, str, int]] = set()
    for (name, epochs, recipe, batch), group in sorted(groups.items()):
        seeds = {g["seed"] for g in group}
        repeat = any((name, epochs, recipe, seed) in seen for seed in seeds)
        seen |= {(name, epochs, recipe, seed) for seed in seeds}
        lines.append(f"| {name} | {recipe} | {seed_ranges(seeds)}{' (repeat)' if repeat else ''} | "
                     f"{group[0].get('date', '')} | {epochs} | "
                     f"{stat([g['forces_rmse'] for g in group], 1)} | {stat([g['forces_mae'] for g in group], 1)} | "
                     f"{stat([g['energy_rmse'] for g in group], 2)} | {stat([g['wall_s'] for g in group], 0)} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append(f"\n{len(failed)} runs failed or did not finish: "
                     + ", ".join(f"{r['set']}/{r['recipe']}/{r['seed']}" for r in failed))
    return "\n".join(lines)


def selection(spec: str) -> tuple[str, set[int] | None]:
    """``recipe`` or ``recipe:seeds`` (``0-2,6-8``) -> (recipe, seeds or None for all)."""
    recipe, _, seeds = spec.partition(":")
    return recipe, (parse_seeds(seeds) if seeds else None)


def compare(path: Path, ours: list[str], reference: list[str]) -> str:
    """Per set: mean ± standard error over seeds of the rows selected by ``ours`` and by
    ``reference`` (each a list of ``recipe[:seeds]``; a seed run more than once counts once, its
    latest batch), their ratio, and the difference of the means in standard errors of that
    difference (a markdown table)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]

    def pick(specs: list[str], name: str) -> list[dict]:
        chosen: dict[tuple[str, int], dict] = {}
        for recipe, seeds in map(selection, specs):
            for r in sorted(rows, key=lambda r: r.get("batch", 1)):  # the latest run of a seed wins
                if "error" not in r and r["set"] == name and r["recipe"] == recipe and (seeds is None or r["seed"] in seeds):
                    chosen[recipe, r["seed"]] = r
        return list(chosen.values())

    def mean_se(values: np.ndarray) -> tuple[float, float]:
        return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")

    lines = ["| set | seeds (ours / ref.) | force RMSE ours | force RMSE ref. | ratio | Δ/SE | energy RMSE ours "
             "| energy RMSE ref. | ratio | Δ/SE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted({r["set"] for r in rows}):
        a, b = pick(ours, name), pick(reference, name)
        if not a or not b:
            continue
        cells = []
        for key, digits in (("forces_rmse", 1), ("energy_rmse", 2)):
            (ma, sa), (mb, sb) = mean_se(np.array([r[key] for r in a])), mean_se(np.array([r[key] for r in b]))
            cells += [f"{ma:.{digits}f} ± {sa:.{digits}f}", f"{mb:.{digits}f} ± {sb:.{digits}f}", f"{ma / mb:.2f}",
                      f"{(ma - mb) / np.hypot(sa, sb):+.1f}"]
        lines.append(f"| {name} | {len(a)} / {len(b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / ".accuracy_data")
    p = sub.add_parser("run")
    p.add_argument("--sets", type=Path, default=ROOT / ".accuracy_data")
    p.add_argument("--set-names", nargs="*", default=list(SETS), choices=SETS)
    p.add_argument("--recipes", nargs="*", default=["mlip"], help=f"of {list(RECIPES)} and the --variant names")
    p.add_argument("--variant", action="append", default=[], help="name=recipe:key=value,... (repeatable)")
    p.add_argument("--seconds", type=float, help="train each mlip run this many seconds instead of --epochs "
                   "(one run per GPU at a time: runs sharing a GPU cannot be compared at equal time)")
    p.add_argument("--mace-torch", help="PYTHONPATH of a mace-torch environment: adds its rows")
    p.add_argument("--mace-stage-two", action="store_true", help="also mace-torch with its --swa (mace-torch-stage-two)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS_DEFAULT)
    p.add_argument("--gpus", nargs="*", type=int, default=[0])
    p.add_argument("--budget-s", type=float, default=3600, help="runs still going after this are stopped")
    p.add_argument("--work", type=Path, default=Path("/tmp/accuracy_runs"))
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "accuracy_parity")
    p = sub.add_parser("score")
    p.add_argument("framework", choices=["mlip", "mace"])
    p.add_argument("model")
    p.add_argument("test")
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    p = sub.add_parser("compare", help="ours against a reference: mean ± standard error, ratio, difference in SE")
    p.add_argument("results", type=Path)
    p.add_argument("--ours", nargs="+", default=["mlip"], help="recipe[:seeds] whose rows are ours (seeds: 0-2,9)")
    p.add_argument("--reference", nargs="+", default=["mace-torch"], help="recipe[:seeds] compared against")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data_dir, args.out)
    elif args.command == "run":
        names = [add_variant(v) for v in args.variant]
        args.recipes = [*args.recipes, *(n for n in names if n not in args.recipes)]
        unknown = [r for r in args.recipes if r not in RECIPES]
        if unknown:
            raise SystemExit(f"unknown recipes {unknown}: one of {list(RECIPES)}")
        run(args)
    elif args.command == "score":
        print(json.dumps(score(args.framework, args.model, args.test, args.device)))
    elif args.command == "compare":
        print(compare(args.results, args.ours, args.reference))
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
