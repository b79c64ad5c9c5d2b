"""mace-torch's "stage two" (its ``--swa`` / ``--stage_two``): the last epochs of a run with
other loss weights and a lower learning rate.

From epoch ``start_epoch`` on (counted from 0), the loss weighs energy, forces and stress as
given here (mace-torch's defaults: energy 1000, forces 100, learning rate 1e-3, from three
quarters of the epochs), the optimiser runs at ``lr``, and the plateau scheduler stops.
The validation loss changes meaning with the weights, so the best-checkpoint selection
(each ``ModelCheckpoint`` that monitors a value) starts over, as mace-torch's does: the
run's best checkpoint, and the model it exports, come from stage two; the best checkpoint
of stage one stays on disk. The EMA carries on. (mace-torch also keeps an equal-weight
average of the stage-two epochs, SWA, which it does not export when EMA is on; it is left out.)

Whether stage two has begun is saved in the checkpoint. A run resumed in stage two (also
part-way through an epoch) applies the weights again (they live in the config) and keeps
the learning rate, scheduler state and best checkpoint it saved.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class StageTwo(Callback):
    """Switch loss weights and learning rate at ``start_epoch`` (module docstring).

    Args:
        start_epoch: the first epoch of stage two (0-based).
        energy_weight, forces_weight: the loss weights from then on (per-atom energy, force components).
        stress_weight: the stress weight from then on (None: unchanged).
        lr: the learning rate from then on.
    """

    def __init__(self, start_epoch: int, energy_weight: float = 1000.0, forces_weight: float = 100.0,
                 stress_weight: float | None = None, lr: float = 1e-3):
        if start_epoch < 1:
            raise ValueError(f"stage_two.start_epoch must be at least 1 (stage one needs an epoch), got {start_epoch}")
        self.start_epoch, self.lr = int(start_epoch), float(lr)
        self.weights = {"energy": float(energy_weight), "forces": float(forces_weight)}
        if stress_weight is not None:
            self.weights["stress"] = float(stress_weight)
        self.started = False

    def state_dict(self) -> dict:
        return {"started": self.started}

    def load_state_dict(self, state_dict: dict) -> None:
        self.started = bool(state_dict["started"])

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.hparams.scheduler == "cosine":
            raise ValueError("stage_two sets its own learning rate: use module.scheduler=plateau or constant with it")
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "require_labels"):
            weights = {**pl_module.loss.weights, **self.weights}
            datamodule.require_labels(**{name: bool(weight) for name, weight in weights.items()})

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed part-way through an epoch gets no on_train_epoch_start for that epoch
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch < self.start_epoch:
            return
        if any(pl_module.loss.weights[name] != weight for name, weight in self.weights.items()):
            pl_module.loss.weights.update(self.weights)
            pl_module.release_training_graphs()  # captured with the old weights: capture again
        pl_module.plateau = None
        if self.started:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lr * group.get("lr_factor", 1.0)  # fine-tuning runs keep their per-block factors
        for checkpoint in trainer.checkpoint_callbacks:
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor is not None:
                checkpoint.best_k_models, checkpoint.kth_best_model_path = {}, ""
                checkpoint.best_model_score, checkpoint.best_model_path = None, ""
                checkpoint.kth_value = torch.tensor(torch.inf if checkpoint.mode == "min" else -torch.inf)
        self.started = True
        log.info("stage two from epoch %d: loss weights %s, learning rate %g", trainer.current_epoch, self.weights,
                 self.lr)
