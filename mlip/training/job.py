"""One training job from a composed ``mlip-train`` config: data, model, trainer, fit, test, export.

`mlip.cli.train` is the command; this module does the work (its imports, torch and Lightning,
are what the command loads only once it runs, not for ``--help``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from mlip.atomic import atomic_write_bytes
from mlip.evaluation.plots import learning_curve
from mlip.export import save_model
from mlip.finetune.e0s import MODES as E0_MODES
from mlip.finetune.prepare import prepare_finetuning
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.threads import set_threads
from mlip.training.checkpoint_io import BackgroundCheckpointIO, newest_checkpoint
from mlip.training.monitoring import ProgressBar

PRETRAINED = "mlip.finetune.pretrained.load_pretrained"
log = logging.getLogger("mlip.train")


def build_potential(model_cfg: DictConfig, statistics) -> Potential:
    """Instantiate the configured model with the training-set statistics it needs."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    target = kwargs.pop("_target_")
    # ZBL belongs to the Potential (every model family): model.pair_repulsion=zbl
    pair_kind, pair_scaled = kwargs.pop("pair_repulsion", None), kwargs.pop("pair_repulsion_scaled", False)
    kwargs.update(num_elements=len(statistics.elements), avg_num_neighbors=statistics.avg_num_neighbors)
    if kwargs.get("distance_transform") is not None:  # the transform reads each species' covalent radius
        kwargs["atomic_numbers"] = [int(z) for z in statistics.elements]
    spec = {"target": target, "kwargs": kwargs}
    if pair_kind is not None:
        spec["pair_repulsion"] = {"kind": pair_kind, "p": int(kwargs.get("cutoff_power", 6)), "scaled": bool(pair_scaled)}
    return Potential(
        build_model(spec), statistics.elements, statistics.e0s, statistics.scale, statistics.shift, model_spec=spec
    )


def is_pretrained(model_cfg: DictConfig) -> bool:
    """``model=pretrained``: the run starts from a model file (`mlip.finetune`)."""
    return model_cfg.get("_target_") == PRETRAINED


def build_data_and_potential(cfg: DictConfig):
    """The data module (set up for ``fit``) and the potential to train: built from ``cfg.model``
    and the training-set statistics, or a model file fine-tuned (``model=pretrained``)."""
    if not is_pretrained(cfg.model):
        if cfg.get("finetune") is not None:
            raise ValueError("finetune settings need a model file to start from: model=pretrained model.path=FILE "
                             "(the finetune=naive and finetune=replay configs select it)")
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        return datamodule, build_potential(cfg.model, datamodule.statistics)
    # called here, not inside instantiate: a bad file, head or cutoff stays one line (Hydra wraps what it calls)
    foundation = instantiate(cfg.model, _partial_=True)()
    cfg.model.r_max = foundation.r_max  # for the data's neighbour lists
    e0s = cfg.data.get("e0s")
    finetune = OmegaConf.to_container(cfg.finetune, resolve=True) if cfg.get("finetune") is not None else None
    # the data module knows no foundation's E0s; `prepare_finetuning` adds the elements the data lacks
    datamodule = instantiate(cfg.data, e0s="zero") if e0s in E0_MODES else instantiate(cfg.data)
    datamodule.setup("fit")
    potential = prepare_finetuning(foundation, datamodule, e0s, finetune)
    # the statistics logged and written with the model name the E0s the model uses (the
    # foundation's, estimated or given), not the zeros the data module was set up with
    used = dict(zip(potential.elements.tolist(), potential.e0s.tolist()))
    datamodule.statistics.e0s = [used[int(z)] for z in datamodule.statistics.elements]
    return datamodule, potential


def resume_checkpoint(resume: str | None, checkpoint_dir: Path) -> str | None:
    """``None``, an explicit path, or ``"auto"``: the newest readable of this run folder's
    ``last.ckpt`` (epoch end) and ``step.ckpt`` (every N steps), if any."""
    if resume is None:
        return None
    if checkpoint_dir.is_dir():  # a killed run's half-written checkpoint temporaries (AtomicCheckpointIO)
        for stale in checkpoint_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if resume == "auto":
        newest = newest_checkpoint(checkpoint_dir)
        return None if newest is None else str(newest)
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    return str(resume)


def format_metrics(metrics: dict[str, float], split: str = "test") -> str:
    """A table of the ``split``'s errors in meV units."""
    units = {"energy": "meV/atom", "forces": "meV/Å", "stress": "meV/Å³"}
    lines = [f"{'quantity':<10}{'MAE':>12}{'RMSE':>12}  unit"]
    for quantity, unit in units.items():
        if f"{split}_{quantity}_mae" in metrics:
            mae, rmse = 1000 * metrics[f"{split}_{quantity}_mae"], 1000 * metrics[f"{split}_{quantity}_rmse"]
            lines.append(f"{quantity:<10}{mae:>12.3f}{rmse:>12.3f}  {unit}")
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns the test metrics (validation without a test split; eV units)."""
    L.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.get("threads"))
    torch.set_default_dtype(getattr(torch, cfg.dtype))
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)

    datamodule, potential = build_data_and_potential(cfg)
    module = instantiate(cfg.module, potential=potential)
    weights = module.loss.weights
    datamodule.require_labels(energy=bool(weights["energy"]), forces=bool(weights["forces"]), stress=bool(weights["stress"]))
    log.info("statistics: %s", json.dumps(datamodule.statistics.to_dict()))

    checkpoint = instantiate(cfg.checkpoint)
    callbacks = [checkpoint, LearningRateMonitor()]
    for extra in ("step_checkpoint", "preemption", "stage_two"):
        if cfg.get(extra) is not None:
            callbacks.append(instantiate(cfg[extra]))
    callbacks += [instantiate(c) for c in (cfg.get("monitoring") or {}).values() if c is not None]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar(refresh_rate=cfg.get("progress_bar_refresh_rate", 20)))
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    plugins = [BackgroundCheckpointIO(), *instantiate(cfg.trainer.get("plugins") or [])]  # e.g. SLURMEnvironment
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg.resume, Path(checkpoint.dirpath)))

    best = "best" if checkpoint.best_model_path else None
    # the best checkpoint's weights are loaded for the final evaluation (and the export);
    # without a test split (OC configs: train and val files only), its validation errors are reported
    split = "test" if datamodule.split_size("test") else "val"
    evaluate = trainer.test if split == "test" else trainer.validate
    results = evaluate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()} if results else {}
    if not trainer.is_global_zero:  # every rank has the same weights and metrics; one writes them
        return metrics
    save_model(
        module.evaluation_potential(),
        cfg.model_file,
        extra={"statistics": datamodule.statistics.to_dict(), "test_metrics": metrics},
    )
    atomic_write_bytes(output_dir / "test_metrics.json", json.dumps(metrics, indent=2).encode())
    print(f"\n{split} set ({datamodule.split_size(split)} structures, EMA weights of the best checkpoint):")
    print(format_metrics(metrics, split))
    plots = write_learning_curve(output_dir)
    print(f"model file: {cfg.model_file}\ncheckpoints: {checkpoint.dirpath}")
    if plots is not None:
        print(f"plots: {plots} (learning_curve.png, val_parity_epochNNN.png)")
    print()
    return metrics


def write_learning_curve(output_dir: Path) -> Path | None:
    """``plots/learning_curve.png`` from the CSV logger's ``logs/metrics.csv``; the plots folder, or
    None without a CSV log."""
    metrics_csv = output_dir / "logs" / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    plots = output_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plots / "learning_curve.png", learning_curve(metrics_csv))
    return plots
