#!/usr/bin/env python
"""How long does a whole training run take, ours against `mace_run_train`, and where does the time go?

Whole runs, end to end, beside the ceiling of our graphed step, in one call on the GPU machine.

    python scripts/accuracy_parity.py prepare --data-dir ../shared/datasets --out .accuracy_data
    python scripts/benchmark_training.py --set .accuracy_data/3bpa_random --epochs 40 \
        --mace-torch /tmp/site_mace:/tmp/site --gpus 0 1 --out $OUT

The runs are the issue-18 setting (`scripts/accuracy_parity.py`: MACE 128x0e+128x1o, ℓ ≤ 3,
ν = 3, 2 layers, batch 10, lr 0.01, AMSGrad, EMA 0.99, E and F weights 1 and 100) on one
held-out set's files. Ours run one after another on the first GPU, each variant in `VARIANTS`
(overrides of the shipped defaults, ``module.cuda_graphs=true``); mace-torch runs at the same
time on the second GPU (on the first if only one is given; then the runs share it).

Reported per run: wall-clock from launch to exit, time to the end of the first optimiser
step, seconds in training epochs, in validation and in the test, steady-state milliseconds
per step (median over epochs after the first) and structures per second over the whole run
(``phase_times.json``, `mlip.training.monitoring.PhaseTimes`), and milliseconds per step within
epochs (``in_epoch_step_ms``: from the throughput logged every 10 steps, so without each epoch's
start and end), and within the first logged interval of each epoch from the third on
(``epoch_start_step_ms``: what the previous epoch's end, validation and checkpoint leave
behind). The ceiling is our graphed
step alone (loss and gradients replayed from a CUDA graph, then the update replayed from
another: gradient clipping, fused AMSGrad, EMA; ``step_ms``) on one batch of the same data,
beside the same step with the update launched eagerly (``eager_update_ms``, the ceiling of
sessions before the graphed update), timed in this process before the runs, after the
startup phases it goes through by hand (imports, data, model, first step, first validation),
each timed: where a run's time to its first step goes.

``--profile-epochs N`` instead runs `mlip-train` (the first variant) for N epochs under
cProfile, twice in a row (the second finds the caches the first wrote), and prints the
functions that take the most time, by cumulative and by own time (the stats files land in
``--out``; ``python -m pstats`` reads them); then once more for 3N epochs under Lightning's
``SimpleProfiler``, whose report gives the host time of each step's parts (no added
synchronisation: GPU time shows up where the host waits for it).

``--crystals SET`` instead compares training on cells of every size (a set written by
``scripts/benchmark_crystals.py prepare``: ``train.xyz``, ``valid.xyz``, ``test.xyz``, ``e0.xyz``)
with **our shipped defaults** (``mlip-train data=extxyz trainer=gpu``, the files, the model and the
loss named, nothing about batching or graphs) against ``mace_run_train`` (default, and with
``--mace-cueq`` its cuequivariance path), same MACE (``--width`` x 0e + x 1o, ℓ ≤ 3, ν = 3, 2
layers, r_max 5), batch 16, lr 0.005, E/F weights 1/100, each run alone, ours twice (a cold then
a warm kernel cache): whole run, first step, first and steady epoch, captures, peak reserved GPU
memory (pools included), held-out force and energy RMSE (both models scored by their own ASE
calculator on ``test.xyz``, float64). ``--shared N`` then runs N of ours at once on the one GPU.

    python scripts/benchmark_crystals.py prepare --structures 20000 --relaxations 4 --out /tmp/crystals
    python scripts/benchmark_training.py --crystals /tmp/crystals/emt_20000 --epochs 4 --width 64 \
        --mace-torch /tmp/site_mace:/tmp/site --mace-cueq --shared 4 --out $OUT

``--trace-steps N`` instead runs `mlip-train` (each variant in turn) for three epochs with
`step_trace.StepTrace`, which traces N steps of the third epoch with torch.profiler: wall
and GPU-busy milliseconds per step, the host's waits for the GPU, and the operators by host
and GPU time (``step_trace.txt`` in ``--out``, one folder per variant).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from accuracy_parity import ROOT, mace_command, mlip_command
from ase.io import read

VARIANTS = {
    "mlip": [],
    "mlip, no loader workers": ["data.num_workers=0"],  # the default on a GPU is two (AtomicDataModule)
    "mlip, eager update": ["module.cuda_graph_update=false"],  # clipping, Adam and EMA from Lightning's hooks
    "mlip, finite checks read every step": ["module.nonfinite_check_every=1"],
    "mlip, parity plot every epoch": ["monitoring.val_parity.every_n_epochs=1"],
    "mlip, no checkpoints": ["checkpoint.save_top_k=0", "checkpoint.save_last=false", "step_checkpoint=null"],
}


def startup_and_ceiling(folder: Path, device: str = "cuda", repeats: int = 200, warm: int = 10) -> dict[str, float]:
    """Seconds of each startup phase of our training, done by hand in this process as
    `mlip-train` does it, then milliseconds of the whole optimiser step replayed from a CUDA
    graph (the ceiling), on the first training batch: ``imports``, ``data`` (reading, graphs,
    statistics), ``model`` (build and move), ``first_step`` (cuequivariance set-up, warm-up and
    capture of the training step), ``first_validation`` (the same for a validation batch on the
    EMA weights), ``step_ms`` (update graphed) and ``eager_update_ms``."""
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times[name] = round(now - clock, 2)
        clock = now

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mlip.cli.train import CONFIG_DIR, build_potential
    from mlip.models.cuda_graph import GraphedPotential
    from mlip.training.cuda_graph_loss import GraphedLoss
    from mlip.training.cuda_graph_update import GraphedUpdate
    from mlip.training.ema import ExponentialMovingAverage

    torch.zeros(1, device=device)  # the CUDA context belongs to imports
    phase("imports")
    overrides = [o for o in mlip_command(folder, Path("/tmp/unused"), "mlip", 0, 1, ())[3:]
                 if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "output_dir=/tmp/unused"])
    torch.set_float32_matmul_precision("highest")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    host_batch = next(iter(datamodule.train_dataloader()))
    batch = host_batch.clone().to(device)
    val_batch = next(iter(datamodule.val_dataloader())).to(device)
    phase("data")
    module = instantiate(cfg.module, potential=build_potential(cfg.model, datamodule.statistics)).to(device)
    parameters = list(module.potential.parameters())
    optimizer = torch.optim.Adam(parameters, lr=0.01, amsgrad=True, fused=True)
    ema = ExponentialMovingAverage(module.potential, 0.99)
    update = GraphedUpdate(optimizer, max_norm=10.0, after=[lambda skipped: ema.update(module.potential, skipped)])
    graphed = GraphedLoss(module.potential, module.loss, check_elements=False, into=update)
    eager_graphed = GraphedLoss(module.potential, module.loss, check_elements=False)
    phase("model")

    def step() -> None:  # as PotentialModule with cuda_graphs on one GPU
        graphed(batch)
        update.step()

    def eager_update_step() -> None:  # as PotentialModule with cuda_graph_update=false
        optimizer.zero_grad(set_to_none=True)
        loss, _ = eager_graphed(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
        ema.update(module.potential)

    step()
    phase("first_step")
    with torch.enable_grad():
        GraphedPotential(ema.module, check_elements=False)(val_batch)
    phase("first_validation")
    for function in (step, eager_update_step):
        for _ in range(warm):
            function()
        phase("warm_steps" if function is step else "eager_update_warm_steps")
        for _ in range(repeats):
            function()
        phase("timed")
        times["step_ms" if function is step else "eager_update_ms"] = round(1000 * times.pop("timed") / repeats, 2)
    if device == "cuda":
        times.update(host_costs(host_batch, device, graphed, batch, update))
    return times


def host_costs(host_batch, device: str, graphed, batch, update, repeats: int = 50) -> dict[str, float]:
    """Host milliseconds (the GPU idle before each call, so no queue pushes back) of the step's
    parts that launch work: a pinned batch's transfer, tensor by tensor (``Batch.to``) and in
    one copy (`batch_to_device`, as the data module moves worker batches); the graphed loss
    (buffer fill and replay) of a batch on the GPU and of a pinned batch on the host (as
    training steps take it: one copy of a host image of the padded buffers); the graphed
    update (replay)."""
    import torch

    from mlip.data.loader import PackedBatch, batch_to_device

    def host_ms(calls) -> float:
        total = 0.0
        for call in calls:
            torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            total += time.perf_counter() - start
        torch.cuda.synchronize()
        return round(1000 * total / len(calls), 3)

    packed = PackedBatch.pack(host_batch)
    per_tensor = [host_batch.clone().pin_memory() for _ in range(repeats)]
    one_buffer = [packed.pin_memory() for _ in range(repeats)]
    pinned = packed.pin_memory()  # stays on the host: the graphed loss copies it in itself
    return {
        "transfer_per_tensor_host_ms": host_ms([lambda b=b: b.to(device, non_blocking=True) for b in per_tensor]),
        "transfer_one_copy_host_ms": host_ms([lambda b=b: batch_to_device(b, device) for b in one_buffer]),
        "loss_host_ms": host_ms([lambda: graphed(batch)] * repeats),
        "loss_from_host_batch_host_ms": host_ms([lambda: graphed(pinned)] * repeats),
        "update_host_ms": host_ms([update.step] * repeats),
    }


def summarise(name: str, run_dir: Path, launched: float, wall: float, n_train: int, epochs: int) -> dict:
    row = {"run": name, "wall_s": round(wall, 1), "structures_per_s": round(n_train * epochs / wall, 1)}
    path = run_dir / "phase_times.json"
    if path.is_file():
        times = json.loads(path.read_text())
        per_epoch = times["epochs"]
        row.update(
            fit_start_s=round(times["fit_start"] - launched, 1),
            first_epoch_s=round(times.get("first_epoch_start", times["fit_start"]) - launched, 1),
            first_step_s=round(times["first_step_end"] - launched, 1),
            train_s=round(sum(e["train_s"] for e in per_epoch), 1),
            validation_s=round(sum(e["validation_s"] for e in per_epoch), 1),
            test_s=round(times.get("test_end", 0) - times.get("test_start", 0), 1),
            step_ms=round(1000 * statistics.median(e["train_s"] / e["steps"] for e in per_epoch[1:] or per_epoch), 2),
        )
        logged = in_epoch_throughput(run_dir)
        if logged:
            structures_per_step = n_train / per_epoch[-1]["steps"]
            row["in_epoch_step_ms"] = round(1000 * structures_per_step / statistics.median(v for _, v in logged), 2)
            # each epoch's first interval (its first steps, after the last epoch's validation and
            # checkpoint), from the third epoch on: the second epoch captures new sizes
            first = {}
            for epoch, value in logged:
                first.setdefault(epoch, value)
            later = [v for epoch, v in first.items() if epoch >= 2]
            if later:
                row["epoch_start_step_ms"] = round(1000 * structures_per_step / statistics.median(later), 2)
    return row


def in_epoch_throughput(run_dir: Path) -> list[tuple[int, float]]:
    """The (epoch, structures per second) that `mlip.training.monitoring.Throughput` logged
    (CSV logger), each over the steps since the last logging step or the epoch's first step:
    training within epochs, without their starts and ends (``step_ms`` has them)."""
    values = []
    for path in run_dir.glob("logs/**/metrics.csv"):
        with path.open() as file:
            values += [(int(float(row["epoch"])), float(row["structures_per_s"]))
                       for row in csv.DictReader(file) if row.get("structures_per_s")]
    return values


def run_logged(command: list[str], env: dict, log: Path, keep: int = 20000) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` from the project root; the tails of its output go to ``log``. Returns it
    and its wall-clock seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(done.stdout[-keep:] + "\n---- stderr\n" + done.stderr[-keep:])
    return done, wall


def run_one(name: str, command: list[str], env: dict, run_dir: Path, n_train: int, epochs: int, log: Path) -> dict:
    launched = time.time()
    done, wall = run_logged(command, env, log)
    if done.returncode != 0:
        return {"run": name, "error": done.stderr[-800:]}
    return summarise(name, run_dir, launched, wall, n_train, epochs)


def profile_runs(folder: Path, epochs: int, variant: str, out: Path, work: Path, env: dict) -> None:
    """``mlip-train`` under cProfile, twice (cold and warm caches): stats files and a summary in ``out``."""
    import pstats

    for attempt in ("cold", "warm"):
        run_dir = work / f"profile-{attempt}"
        stats_file = out / f"train-{attempt}.prof"
        command = mlip_command(folder, run_dir, "mlip", 0, epochs, ("monitoring.val_parity=null", *VARIANTS[variant]))
        command[1:1] = ["-m", "cProfile", "-o", str(stats_file)]
        done, wall = run_logged(command, env, out / f"profile-{attempt}.log")
        print(f"\n==== {attempt} run: {epochs} epochs, {wall:.1f} s wall, exit {done.returncode}", flush=True)
        times = run_dir / "phase_times.json"
        if times.is_file():
            print(times.read_text()[:1500])
        if stats_file.is_file():
            stats = pstats.Stats(str(stats_file))
            for key in ("cumulative", "tottime"):
                stats.sort_stats(key).print_stats(45)
    run_dir = work / "profile-steps"
    command = mlip_command(folder, run_dir, "mlip", 0, 3 * epochs,
                           ("monitoring.val_parity=null", "+trainer.profiler=simple", *VARIANTS[variant]))
    done, _ = run_logged(command, env, out / "profile-steps.log", keep=60000)
    report = done.stdout + done.stderr
    print(f"\n==== {3 * epochs} epochs under Lightning's SimpleProfiler, exit {done.returncode}")
    print(report[report.find("FIT Profiler Report"):][:12000])


def trace_runs(folder: Path, steps: int, variants: list[str], out: Path, work: Path, env: dict) -> None:
    """Three epochs of `mlip-train` per variant with `StepTrace` on N steps of the third."""
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])))
    for k, name in enumerate(variants):
        folder_out = out / f"trace-{k}"
        trace = ("+monitoring.step_trace._target_=step_trace.StepTrace", f"+monitoring.step_trace.out={folder_out}",
                 f"+monitoring.step_trace.steps={steps}")
        command = mlip_command(folder, work / f"trace-{k}", "mlip", 0, 3, ("monitoring.val_parity=null", *trace,
                                                                           *VARIANTS[name]))
        done, wall = run_logged(command, env, out / f"trace-{k}.log")
        summary = folder_out / "step_trace.json"
        print(f"\n==== {name}: exit {done.returncode}, {wall:.1f} s")
        print(summary.read_text() if summary.is_file() else done.stderr[-2000:], flush=True)


def crystal_mlip_command(folder: Path, run_dir: Path, width: int, epochs: int) -> list[str]:
    """``mlip-train`` with the shipped defaults on a crystal set: only data, model, loss and epochs named."""
    return [sys.executable, "-m", "mlip.cli.train", "data=extxyz", "trainer=gpu",
            f"data.train_files=[{folder / 'train.xyz'}]", f"data.val_files=[{folder / 'valid.xyz'}]",
            f"data.test_files=[{folder / 'test.xyz'}]", "data.val_fraction=0", "data.test_fraction=0",
            "data.reader={energy_key: energy, forces_key: forces, stress_key: null, virial_key: null}",
            f"data.e0s={folder / 'e0.xyz'}", "data.batch_size=16", "data.val_batch_size=16",
            f"model.hidden_irreps={width}x0e+{width}x1o", "model.max_ell=3", "model.correlation=3",
            "model.num_interactions=2", "model.r_max=5.0", "module.lr=0.005", "module.loss.energy_weight=1",
            "module.loss.forces_weight=100", "module.loss.stress_weight=0", f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]


def crystal_mace_command(folder: Path, run_dir: Path, width: int, epochs: int, cueq: bool) -> list[str]:
    """``mace_run_train`` with the same model, batch, learning rate and loss weights."""
    from accuracy_parity import e0_dict

    return [sys.executable, "-m", "mace.cli.run_train", "--name", "mace", "--seed=0", f"--work_dir={run_dir}",
            f"--train_file={folder / 'train.xyz'}", f"--valid_file={folder / 'valid.xyz'}",
            f"--E0s={e0_dict(folder / 'e0.xyz')!r}", "--model=ScaleShiftMACE", f"--hidden_irreps={width}x0e+{width}x1o",
            "--r_max=5.0", "--max_ell=3", "--correlation=3", "--num_interactions=2", "--batch_size=16",
            "--valid_batch_size=16", f"--max_num_epochs={epochs}", "--lr=0.005", "--amsgrad", "--ema",
            "--ema_decay=0.99", "--loss=weighted", "--energy_weight=1", "--forces_weight=100",
            "--energy_key=energy", "--forces_key=forces", "--device=cuda", "--default_dtype=float32",
            "--eval_interval=1", "--save_cpu", *(["--enable_cueq=True"] if cueq else [])]


def crystal_scores(framework: str, model: Path, test: Path, env: dict) -> dict:
    """Held-out force and energy errors of ``model`` through its own calculator, in a subprocess
    (mace-torch's in its environment)."""
    code = ("import json, sys; sys.path.insert(0, %r); from accuracy_parity import score; "
            "print('SCORES', json.dumps(score(%r, %r, %r, 'cuda')))") % (str(Path(__file__).parent), framework,
                                                                          str(model), str(test))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("SCORES")), None)
    return json.loads(line[7:]) if line else {"score_error": done.stderr[-500:]}


def crystal_epochs(run_dir: Path) -> dict:
    """First and steady (median of the later) epochs' training seconds, captures, peak memory."""
    path = run_dir / "phase_times.json"
    if not path.is_file():
        return {}
    times = json.loads(path.read_text())
    epochs = times["epochs"]
    row = {"first_epoch_train_s": round(epochs[0]["train_s"], 1),
           "steady_epoch_train_s": round(statistics.median(e["train_s"] for e in epochs[1:] or epochs), 2),
           "epochs_recorded": [e["epoch"] for e in epochs],
           "captures": sum(e.get("graph_captures", 0) for e in epochs),
           "capture_s": round(sum(e.get("graph_capture_s", 0.0) for e in epochs), 1),
           "peak_reserved_gb": times.get("peak_reserved_gb")}
    return row


def crystal_runs(args, base: dict, record) -> None:
    folder = args.crystals.resolve()
    n_train = len(read(folder / "train.xyz", ":"))
    test = folder / "test.xyz"
    env = dict(base, CUDA_VISIBLE_DEVICES=str(args.gpus[0]))
    runs = []
    if args.mace_torch:
        mace_env = dict(env, PYTHONPATH=args.mace_torch, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
        for cueq in (False, True) if args.mace_cueq else (False,):
            name, run_dir = "mace_run_train" + (" --enable_cueq" if cueq else ""), args.work / f"mace-cueq-{cueq}"
            runs.append((name, crystal_mace_command(folder, run_dir, args.width, args.epochs, cueq), run_dir, mace_env,
                         "mace"))
    for attempt in ("cold", "warm"):
        run_dir = args.work / f"mlip-{attempt}"
        runs.append((f"mlip shipped defaults ({attempt} kernel cache)",
                     crystal_mlip_command(folder, run_dir, args.width, args.epochs), run_dir, env, "mlip"))
    for name, command, run_dir, run_env, framework in runs:
        launched = time.time()
        done, wall = run_logged(command, run_env, args.out / f"{run_dir.name}.log")
        row = {"run": name, "wall_s": round(wall, 1), "n_train": n_train, "epochs": args.epochs}
        if done.returncode != 0:
            row["error"] = done.stderr[-800:]
        elif framework == "mlip":
            row.update(summarise(name, run_dir, launched, wall, n_train, args.epochs))
            row.update(crystal_epochs(run_dir))
            row.update(crystal_scores("mlip", run_dir / "model.safetensors", test, env))
        else:
            row.update(crystal_scores("mace", run_dir / "mace.model", test, run_env))
        record(row)
    if args.shared:
        threads, rows = [], {}
        for k in range(args.shared):
            run_dir = args.work / f"shared-{k}"
            command = crystal_mlip_command(folder, run_dir, args.width, args.epochs)

            def one(k=k, run_dir=run_dir, command=command) -> None:
                launched = time.time()
                done, wall = run_logged(command, env, args.out / f"shared-{k}.log")
                row = {"run": f"mlip shipped defaults, {k + 1} of {args.shared} sharing the GPU", "wall_s": round(wall, 1),
                       "exit": done.returncode}
                if done.returncode != 0:
                    row["error"] = done.stderr[-800:]
                else:
                    row.update(summarise(row["run"], run_dir, launched, wall, n_train, args.epochs))
                    row.update(crystal_epochs(run_dir))
                rows[k] = row

            threads.append(threading.Thread(target=one))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k in sorted(rows):
            record(rows[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", type=Path, default=ROOT / ".accuracy_data" / "3bpa_random")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--mace-torch", help="PYTHONPATH of a mace-torch environment: adds its run")
    parser.add_argument("--gpus", nargs="*", type=int, default=[0])
    parser.add_argument("--profile-epochs", type=int, default=0, help="profile runs of this many epochs instead")
    parser.add_argument("--trace-steps", type=int, default=0, help="trace this many steps of each variant instead")
    parser.add_argument("--crystals", type=Path, help="a crystal set (benchmark_crystals.py prepare): the crystal comparison")
    parser.add_argument("--width", type=int, default=64, help="--crystals: MACE channels")
    parser.add_argument("--mace-cueq", action="store_true", help="--crystals: also mace_run_train --enable_cueq True")
    parser.add_argument("--shared", type=int, default=0, help="--crystals: then this many of our runs at once")
    parser.add_argument("--work", type=Path, default=Path("/tmp/benchmark_training"))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark_training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ, OMP_NUM_THREADS="4", WANDB_MODE="disabled")
    if args.crystals is not None:
        def record_row(row: dict) -> None:
            print(json.dumps(row), flush=True)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

        return crystal_runs(args, base, record_row)
    folder = args.set.resolve()
    n_train = len(read(folder / "train.xyz", ":"))
    ours_gpu, theirs_gpu = args.gpus[0], args.gpus[-1]
    if args.profile_epochs:
        env = dict(base, CUDA_VISIBLE_DEVICES=str(ours_gpu))
        return profile_runs(folder, args.profile_epochs, args.variants[0], args.out, args.work, env)
    if args.trace_steps:
        env = dict(base, CUDA_VISIBLE_DEVICES=str(ours_gpu))
        return trace_runs(folder, args.trace_steps, args.variants, args.out, args.work, env)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    mace = None
    if args.mace_torch:
        run_dir = args.work / "mace-torch"
        env = dict(base, CUDA_VISIBLE_DEVICES=str(theirs_gpu), PYTHONPATH=args.mace_torch,
                   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
        command = mace_command(folder, run_dir, 0, args.epochs)
        mace = threading.Thread(target=lambda: record(run_one("mace-torch", command, env, run_dir, n_train, args.epochs,
                                                              args.out / "mace-torch.log")))
        mace.start()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(ours_gpu)  # this process: the ceiling, before our runs
    record({"run": "graphed step alone (ceiling)", **startup_and_ceiling(folder)})
    from mlip.nn.tensor_product.cache import publish_kernels

    publish_kernels()  # our runs start with the kernels the ceiling compiled: a warm cache
    for k, name in enumerate(args.variants):
        run_dir = args.work / f"mlip-{k}"
        # logging every 10 steps: the throughput logged within epochs (in_epoch_step_ms) has samples
        extra = ("trainer.log_every_n_steps=10", *(("monitoring.val_parity=null",) if "parity" not in name else ()))
        command = mlip_command(folder, run_dir, "mlip", 0, args.epochs, (*extra, *VARIANTS[name]))
        env = dict(base, CUDA_VISIBLE_DEVICES=str(ours_gpu))
        record(run_one(name, command, env, run_dir, n_train, args.epochs, args.out / f"mlip-{k}.log"))
    if mace is not None:
        mace.join()
    print(table(rows, args.epochs, n_train))


def table(rows: list[dict], epochs: int, n_train: int) -> str:
    keys = ("wall_s", "fit_start_s", "first_epoch_s", "first_step_s", "train_s", "validation_s", "test_s", "step_ms",
            "in_epoch_step_ms", "epoch_start_step_ms", "structures_per_s")
    lines = [f"{epochs} epochs of {n_train} structures", "| run | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    for row in rows:
        lines.append(f"| {row['run']} | " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    startup = next((r for r in rows if "first_validation" in r), None)
    if startup:
        lines.append("\nstartup by hand, s: " + ", ".join(
            f"{k} {startup[k]}" for k in ("imports", "data", "model", "first_step", "first_validation", "warm_steps")))
        lines.append(f"ceiling with the update launched eagerly: {startup.get('eager_update_ms')} ms")
        host = [f"{k[:-8]} {startup[k]}" for k in startup if k.endswith("_host_ms")]
        if host:
            lines.append("host ms per call, GPU idle: " + ", ".join(host))
        ours = next((r for r in rows if r["run"] == "mlip" and "step_ms" in r), None)
        if ours:
            lines.append(f"steady step / ceiling: {startup['step_ms'] / ours['step_ms']:.0%}")
            if "in_epoch_step_ms" in ours:
                lines.append(f"within epochs / ceiling: {startup['step_ms'] / ours['in_epoch_step_ms']:.0%}")
    mace = next((r for r in rows if r["run"] == "mace-torch" and "wall_s" in r), None)
    ours = next((r for r in rows if r["run"] == "mlip" and "wall_s" in r), None)
    if mace and ours:
        lines.append(f"\nmace-torch / mlip wall-clock: {mace['wall_s'] / ours['wall_s']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
