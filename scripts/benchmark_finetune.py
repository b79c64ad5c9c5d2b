#!/usr/bin/env python
"""Does fine-tuning a foundation model on a few structures of a new system beat training from
scratch, forget less with replay, and run faster than mace-torch's fine-tuning?

    python scripts/benchmark_finetune.py all --data-dir ../shared/datasets --mace-torch /tmp/site_mace:/tmp/site \
        --seeds 0 1 2 --out $OUT                     # on the GPU machine: everything, one call
    python scripts/benchmark_finetune.py table $OUT/results.jsonl

1. A "foundation": mace-torch's ``mace_run_train`` trains an MP-0b3-shaped ScaleShiftMACE
   (density blocks, Agnesi transform, ZBL, 10 Bessel functions) on 450 3BPA configurations
   (H, C, N, O) for ``--foundation-epochs``; `mlip.convert.mace_torch` converts it. The other
   50 3BPA configurations are the foundation-domain test (forgetting).
2. Fine-tuned on 50 acetylacetone configurations (H, C, O: N is cut away), validated on 10,
   for ``--epochs``, each ``--seeds``:
   ``mlip-naive`` (`mlip-train finetune=naive`), ``mlip-replay`` (``finetune=replay``: 3BPA
   structures pseudo-labelled by the foundation), ``mace-naive`` (``--foundation_model
   --multiheads_finetuning False``), ``mace-multihead`` (``--pt_train_file`` 3BPA; mace-torch
   then sets lr 1e-4 and EMA 0.99999 itself), ``mace-multihead-lr`` (the same with
   ``--force_mh_ft_lr``: the learning rate of the other runs), and
   ``mlip-scratch`` / ``mace-scratch`` (the same architecture from random weights).
   E0s: the acetylacetone isolated atoms on every side. Naive fine-tuning keeps the foundation's
   N (``finetune.elements``, ``--foundation_model_elements``) so that its forgetting can be
   scored; replay keeps it for the replay structures; the from-scratch models know H, C, O only.
3. Each model is scored through its own framework's calculator on acetylacetone test_MD_300K
   (``--test-structures`` of it; the new system) and on the held-out 3BPA configurations (for
   a multi-head model through its foundation head), force RMSE in meV/Å; plus wall-clock.
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
from accuracy_parity import e0_dict, score

ROOT = Path(__file__).resolve().parents[1]
# the foundation: MP-0b3-shaped (docs/foundation.md), at r_max 5 Å for molecules
FOUNDATION = ["--model=ScaleShiftMACE", "--r_max=5.0", "--correlation=3", "--num_interactions=2", "--num_radial_basis=10", "--MLP_irreps=16x0e",
              "--radial_MLP=[64,64,64]", "--interaction_first=RealAgnosticDensityInteractionBlock",
              "--interaction=RealAgnosticDensityResidualInteractionBlock", "--pair_repulsion",
              "--distance_transform=Agnesi"]

def common_mace(device: str, batch_size: int = 5) -> list[str]:
    """mace_run_train's options shared by every run (the loss, EMA, AMSGrad, dtype)."""
    return [f"--batch_size={batch_size}", "--valid_batch_size=10", "--amsgrad", "--ema", "--ema_decay=0.99",
            "--loss=weighted", "--energy_weight=1", "--forces_weight=100", "--energy_key=energy",
            "--forces_key=forces", f"--device={device}", "--default_dtype=float32", "--eval_interval=1", "--save_cpu"]


METHODS = ("mlip-naive", "mlip-replay", "mace-naive", "mace-multihead", "mace-multihead-lr", "mlip-scratch", "mace-scratch")
REPLAY_COUNT = 100  # replay structures on both sides
KEEP = "[1,6,7,8]"  # naive fine-tuning keeps the foundation's N (not in the new data), so forgetting can be scored
SIZE = {"hidden": "128x0e+128x1o", "max_ell": 3}  # of the foundation and the from-scratch models (--hidden, --max-ell)


def size_options() -> list[str]:
    return [f"--hidden_irreps={SIZE['hidden']}", f"--max_ell={SIZE['max_ell']}"]


def prepare(data_dir: Path, out: Path) -> None:
    """``out/foundation_{train,valid,test}.xyz`` (3BPA 400/50/50), ``out/ft_{train,valid}.xyz``
    (acetylacetone 50/10), ``out/ft_test.xyz`` (test_MD_300K) and the two E0 files."""
    from ase.io import read, write

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bpa = read(data_dir / "3bpa" / "train_300K.xyz", ":")
    order = rng.permutation(len(bpa))
    for name, index in (("train", order[:400]), ("valid", order[400:450]), ("test", order[450:])):
        write(out / f"foundation_{name}.xyz", [bpa[i] for i in index])
    write(out / "foundation_e0.xyz", read(data_dir / "3bpa" / "iso_atoms.xyz", ":"))
    acac = read(data_dir / "acac" / "train_300K.xyz", ":")
    order = rng.permutation(len(acac))
    write(out / "ft_train.xyz", [acac[i] for i in order[:50]])
    write(out / "ft_valid.xyz", [acac[i] for i in order[50:60]])
    write(out / "ft_test.xyz", read(data_dir / "acac" / "test_MD_300K.xyz", ":"))
    write(out / "ft_e0.xyz", read(data_dir / "acac" / "isolated_atoms.xyz", ":"))


def foundation_command(sets: Path, work: Path, epochs: int, device: str) -> list[str]:
    """``mace_run_train`` of the foundation on 3BPA (batch 10, lr 0.01)."""
    return [sys.executable, "-m", "mace.cli.run_train", "--name", "foundation", "--seed=0", f"--work_dir={work}",
            f"--train_file={sets / 'foundation_train.xyz'}", f"--valid_file={sets / 'foundation_valid.xyz'}",
            f"--E0s={e0_dict(sets / 'foundation_e0.xyz')!r}", *FOUNDATION, *size_options(), f"--max_num_epochs={epochs}",
            "--lr=0.01", *common_mace(device, batch_size=10)]


def mlip_data(sets: Path, seed: int, epochs: int, device: str) -> list[str]:
    """`mlip-train`'s data, loss and trainer overrides of every mlip run (the same as mace-torch's)."""
    cuda = device == "cuda"
    return ["data=extxyz", f"trainer={'gpu' if cuda else 'cpu'}", f"data.train_files=[{sets / 'ft_train.xyz'}]",
            f"data.val_files=[{sets / 'ft_valid.xyz'}]", "data.test_files=null", "data.val_fraction=0",
            "data.test_fraction=0", "data.reader={energy_key: energy, forces_key: forces, stress_key: null, virial_key: null}",
            f"data.e0s={sets / 'ft_e0.xyz'}", "data.batch_size=5", "data.val_batch_size=10",
            "module.loss.energy_weight=1", "module.loss.forces_weight=100", "module.loss.stress_weight=0",
            f"module.cuda_graphs={str(cuda).lower()}", f"trainer.max_epochs={epochs}", "step_checkpoint=null", "preemption=null",
            "monitoring.val_parity=null", "trainer.enable_progress_bar=false", f"seed={seed}"]


def command(method: str, sets: Path, foundation: Path, run_dir: Path, seed: int, epochs: int,
            device: str = "cuda") -> list[str]:
    """The training command of ``method`` (`METHODS`) into ``run_dir``."""
    mlip = [sys.executable, "-m", "mlip.cli.train"]
    if method in ("mlip-naive", "mlip-replay"):
        extra = ([f"finetune.replay.files=[{sets / 'foundation_train.xyz'}]", f"finetune.replay.count={REPLAY_COUNT}",
                  "finetune.replay.ratio=null"] if method == "mlip-replay" else [f"finetune.elements={KEEP}"])
        return [*mlip, f"finetune={method[5:]}", f"model.path={foundation.with_suffix('.safetensors')}",
                *mlip_data(sets, seed, epochs, device), *extra, f"hydra.run.dir={run_dir}"]
    if method == "mlip-scratch":
        return [*mlip, "model=mace_mp", "model.r_max=5.0", f"model.hidden_irreps={SIZE['hidden']}",
                f"model.max_ell={SIZE['max_ell']}", "module.lr=0.01", *mlip_data(sets, seed, epochs, device),
                f"hydra.run.dir={run_dir}"]
    mace = [sys.executable, "-m", "mace.cli.run_train", "--name", "mace", f"--seed={seed}", f"--work_dir={run_dir}",
            f"--train_file={sets / 'ft_train.xyz'}", f"--valid_file={sets / 'ft_valid.xyz'}",
            f"--E0s={e0_dict(sets / 'ft_e0.xyz')!r}", f"--max_num_epochs={epochs}", *common_mace(device)]
    if method == "mace-scratch":
        return [*mace, *FOUNDATION, *size_options(), "--lr=0.01"]
    finetuned = [*mace, f"--foundation_model={foundation}", "--lr=0.003"]
    if method == "mace-naive":
        return [*finetuned, "--multiheads_finetuning=False", "--foundation_model_elements=True"]
    # mace-multihead: mace-torch's own multi-head recipe, which sets lr 1e-4 and EMA 0.99999 itself;
    # mace-multihead-lr: the same at the learning rate of every other fine-tuning run here
    same_lr = ["--force_mh_ft_lr=True"] if method == "mace-multihead-lr" else []
    return [*finetuned, "--multiheads_finetuning=True", f"--pt_train_file={sets / 'foundation_train.xyz'}",
            f"--num_samples_pt={REPLAY_COUNT}", "--subselect_pt=fps", "--weight_pt_head=1.0", *same_lr]


def model_of(method: str, run_dir: Path) -> tuple[str, Path, str | None]:
    """(framework, model file, the head that holds the foundation's domain or None)."""
    if method.startswith("mlip"):
        return "mlip", run_dir / "model.safetensors", "foundation" if method == "mlip-replay" else None
    return "mace", run_dir / "mace.model", "pt_head" if method.startswith("mace-multihead") else None


def scored(framework: str, model: Path, test: Path, device: str, head: str | None, limit: int) -> dict[str, float]:
    """`accuracy_parity.score` of the first ``limit`` structures of ``test`` (head ``head``), in a subprocess."""
    from ase.io import read, write

    subset = test.with_name(f"{test.stem}_first{limit}.xyz")
    if not subset.is_file():
        write(subset, read(test, f":{limit}"))
    return score(framework, str(model), str(subset), device, head)


def run(args: argparse.Namespace) -> None:
    """Train the foundation (unless ``--work`` holds it) while the from-scratch runs, which do not
    need it, share the GPU; then every fine-tuning run at once; then, with ``--solo``, one
    ``mlip-naive`` and one ``mace-naive`` run alone on the GPU for the wall-clock comparison."""
    sets, work = args.sets.resolve(), args.work.resolve()
    results = args.out / "results.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="2", WANDB_MODE="disabled")
    mace_env = dict(env, PYTHONPATH=args.mace_torch or "", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    foundation = work / "foundation" / "foundation.model"

    def one(job: tuple[str, int], solo: bool = False) -> None:
        method, seed = job
        run_dir = work / f"{method}-{seed}-e{args.epochs}{'-solo' if solo else ''}"
        job_env = mace_env if method.startswith("mace") else env
        start = time.perf_counter()
        try:
            done = subprocess.run(command(method, sets, foundation, run_dir, seed, args.epochs, args.device), cwd=ROOT,
                                  env=job_env, capture_output=True, text=True, timeout=args.budget_s)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-1500:])
            row = {"method": method, "seed": seed, "epochs": args.epochs, "wall_s": round(wall, 1), "solo": solo}
            if not solo:
                framework, model, head = model_of(method, run_dir)
                row["new_system"] = score_in(job_env, framework, model, sets / "ft_test.xyz", None, args)
                if "scratch" not in method:  # a model trained on H, C, O alone has no N for 3BPA
                    row["foundation_domain"] = score_in(job_env, framework, model, sets / "foundation_test.xyz", head, args)
        except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
            row = {"method": method, "seed": seed, "error": f"{type(exc).__name__}: {str(exc)[-800:]}"}
        append(results, row)

    jobs = [(m, s) for m in args.methods for s in args.seeds]
    independent = [job for job in jobs if "scratch" in job[0]]
    with ThreadPoolExecutor(max(len(jobs), 1)) as pool:
        running = [pool.submit(one, job) for job in independent]
        if not foundation.is_file():
            start = time.perf_counter()
            done = subprocess.run(foundation_command(sets, foundation.parent, args.foundation_epochs, args.device),
                                  env=mace_env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"foundation training failed:\n{done.stderr[-3000:]}")
            print(f"foundation: {time.perf_counter() - start:.0f} s", flush=True)
        converted = foundation.with_suffix(".safetensors")
        if not converted.is_file():
            subprocess.run([sys.executable, "-m", "mlip.cli.convert", f"input={foundation}", f"output={converted}"],
                           cwd=ROOT, env=env, check=True, capture_output=True)
        if not args.skip_foundation_score:
            append(results, {"method": "foundation", "seed": 0, "foundation_epochs": args.foundation_epochs,
                             "new_system": score_in(mace_env, "mace", foundation, sets / "ft_test.xyz", None, args),
                             "foundation_domain": score_in(mace_env, "mace", foundation, sets / "foundation_test.xyz",
                                                           None, args)})
        running += [pool.submit(one, job) for job in jobs if job not in independent]
        for future in running:
            future.result()
    for method in ("mlip-naive", "mace-naive") if args.solo else ():
        one((method, 0), solo=True)
    print(table(results))


def score_in(env: dict, framework: str, model: Path, test: Path, head: str | None, args) -> dict[str, float]:
    """`scored` in a subprocess of ``env`` (mace-torch's calculator needs its own e3nn)."""
    done = subprocess.run([sys.executable, __file__, "score", framework, str(model), str(test), "--head", head or "",
                           "--limit", str(args.test_structures), "--device", args.device],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scoring {model} on {test.name}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def table(path: Path) -> str:
    """Per method: force RMSE (meV/Å) on the new system and the foundation's domain, mean ± half
    the range over seeds, and wall-clock (runs sharing the GPU, and ``--solo`` runs alone). Markdown."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    lines = ["| method | seeds | new system: force RMSE | 3BPA held out: force RMSE | wall-clock s, GPU shared | "
             "wall-clock s, alone |", "|---|---|---|---|---|---|"]
    for method in ["foundation", *METHODS]:
        alone = [r["wall_s"] for r in rows if r["method"] == method and r.get("solo") and "error" not in r]
        done = [r for r in rows if r["method"] == method and not r.get("solo") and "error" not in r]
        if not done:
            continue

        def stat(values: list[float]) -> str:
            values = np.asarray(values)
            return f"{values.mean():.1f} ± {(values.max() - values.min()) / 2:.1f}" if len(values) > 1 else f"{values[0]:.1f}"

        wall = stat([r["wall_s"] for r in done]) if "wall_s" in done[0] else "-"
        domain = stat([r["foundation_domain"]["forces_rmse"] for r in done]) if "foundation_domain" in done[0] else "-"
        lines.append(f"| {method} | {len(done)} | {stat([r['new_system']['forces_rmse'] for r in done])} | "
                     f"{domain} | {wall} | {stat(alone) if alone else '-'} |")
    failed = [r for r in rows if "error" in r]
    for r in failed:
        lines.append(f"\n{r['method']} seed {r['seed']} failed: {r['error'][:300]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the data files")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / ".finetune_data")
    for name in ("run", "all"):
        p = sub.add_parser(name, help="train the foundation (if absent) and every fine-tuning run, then score"
                           + (" (prepare first)" if name == "all" else ""))
        if name == "all":
            p.add_argument("--data-dir", type=Path, required=True)
        p.add_argument("--sets", type=Path, default=ROOT / ".finetune_data")
        p.add_argument("--mace-torch", required=True, help="PYTHONPATH of a mace-torch 0.3.16 environment")
        p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
        p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
        p.add_argument("--epochs", type=int, default=50, help="fine-tuning (and from-scratch) epochs")
        p.add_argument("--foundation-epochs", type=int, default=80)
        p.add_argument("--test-structures", type=int, default=200, help="structures of each test set scored")
        p.add_argument("--budget-s", type=float, default=3600)
        p.add_argument("--solo", action="store_true", help="then time mlip-naive and mace-naive alone on the GPU")
        p.add_argument("--skip-foundation-score", action="store_true", help="the foundation's row is already in a table")
        p.add_argument("--work", type=Path, default=Path("/tmp/finetune_runs"))
        p.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_finetune")
        p.add_argument("--device", default="cuda")
        p.add_argument("--hidden", default=SIZE["hidden"], help="hidden irreps of the foundation and scratch models")
        p.add_argument("--max-ell", type=int, default=SIZE["max_ell"])
    p = sub.add_parser("score", help="(internal) score one model")
    p.add_argument("framework", choices=["mlip", "mace"])
    p.add_argument("model", type=Path)
    p.add_argument("test", type=Path)
    p.add_argument("--head", default="")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command in ("run", "all"):
        SIZE.update(hidden=args.hidden, max_ell=args.max_ell)
    if args.command == "prepare":
        prepare(args.data_dir, args.out)
    elif args.command == "all":
        prepare(args.data_dir, args.sets)
        run(args)
    elif args.command == "run":
        run(args)
    elif args.command == "score":
        print(json.dumps(scored(args.framework, args.model, args.test, args.device, args.head or None, args.limit)))
    else:
        print(table(args.results))


if __name__ == "__main__":
    main()
