"""LightningModule that trains a `Potential` on energies, forces and stress."""

from __future__ import annotations

import logging
import math
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
import numpy as np
import torch

from mlip.data.structure import DataError
from mlip.models.cuda_graph import GraphedPotential, static_shape
from mlip.models.potential import Potential
from mlip.training.cuda_graph_loss import GraphedLoss, padded_sizes_advice
from mlip.training.cuda_graph_update import GraphedUpdate
from mlip.training.ema import ExponentialMovingAverage
from mlip.training.gradients import clip_by_norm_, global_norm
from mlip.training.loss import EnergyForcesStressLoss
from mlip.training.metrics import PotentialMetrics
from mlip.training.monitoring import logging_step

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("plateau", "cosine", "constant")
NONFINITE_CHECKPOINT = "nonfinite-stop.ckpt"
log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


def check_same_statistics(mine: dict[str, Any], rank0: dict[str, Any], rank: int, rtol: float = 1e-9) -> None:
    """Raise `DataError` unless this rank's training-set statistics equal rank 0's (to ``rtol``)."""

    def same(a, b) -> bool:
        if a is None or b is None or isinstance(a, int):
            return a == b
        return np.shape(a) == np.shape(b) and bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=0.0))

    differ = [key for key in rank0 if not same(mine.get(key), rank0[key])]
    if differ:
        shown = "; ".join(f"{key}: rank 0 {rank0[key]}, rank {rank} {mine.get(key)}" for key in differ)
        raise DataError(f"rank {rank} computed other training-set statistics than rank 0 ({shown}): "
                        "every rank must read the same training files")


class PotentialModule(L.LightningModule):
    """Training, validation (on EMA weights) and test of a `Potential`.

    Args:
        potential: the model wrapped with statistics and autograd derivatives.
        loss: weighted energy/force/stress loss.
        optimizer: ``adam`` or ``adamw``; ``amsgrad`` switches on AMSGrad.
        lr: peak learning rate.
        weight_decay: decoupled for adamw, L2 for adam.
        weight_decay_params: regular expressions (``re.search``) over the potential's parameter
            names that the weight decay applies to; None: all parameters. mace-torch decays the
            interactions' output linears and the product blocks only.
        scheduler: ``plateau`` (on val_loss, per epoch), ``cosine`` (to ``min_lr`` over the
            run, per step) or ``constant``; all start with ``warmup_steps`` of linear warm-up.
        ema_decay: decay of the weight average used for validation, test and export (None: off).
        cuda_graphs: ``"auto"`` (the default), True or False: on CUDA, replay each step's loss
            and gradients from CUDA graphs (`mlip.training.cuda_graph_loss.GraphedLoss`). With
            batches packed to one budget (the data module's ``packed``, on by default on CUDA)
            every batch is padded to that budget and an epoch replays one captured step, and
            validation and test one more graph each. ``"auto"`` captures whenever the model is
            on CUDA; the run says in one log line which path it took and why. Unpacked batches
            are captured per bucket of padded sizes, at the memory of one step per bucket (up to
            ``cuda_graph_buckets``, least recently used dropped). A size
            met again after it was dropped is captured again (about 0.5 s on an H200), so the
            buckets should hold the sizes the batches span: batches of 64 EMT cells span about
            10, of 32 about 20; same-size molecules 1-3. A run whose first epoch spans more sizes
            says so before its first step, and one that keeps dropping sizes says so each
            epoch. Ignored on the CPU.
        cuda_graph_update: with ``cuda_graphs`` (one GPU or DDP; no gradient accumulation,
            clipping by norm or none), the rest of the step too: gradient norm, finite check,
            clipping, the fused optimiser step, the EMA and the skip counters, replayed from one
            more graph (`mlip.training.cuda_graph_update.GraphedUpdate`) instead of launched
            kernel by kernel from Lightning's hooks. Under DDP the gradients are summed over
            the ranks by one all-reduce of a flat buffer before the replay, not by DDP's
            backward hooks. False: those run eagerly.
        max_nonfinite_steps: a step whose loss or gradient norm is NaN/inf is skipped on the
            device (the fused optimiser's ``found_inf``: no weight, optimiser-state or EMA
            update; it still counts in ``global_step``, so schedules go on) and counted; this
            many in a row stop the run with `NonFiniteLossError` after writing the weights of
            the last good step to ``nonfinite-stop.ckpt`` beside the other checkpoints.
        nonfinite_check_every: the skip counters are read on the host (a warning per skipped
            stretch, the stop above) every this many steps and at each epoch end, not every
            step: a step then never waits for the GPU.
        lr_factors: block of the model (``embedding``, ``interactions.0``, ``readouts``, ...) ->
            factor of ``lr`` for its parameters (fine-tuning: a slower backbone than readouts).
            Frozen parameters (``requires_grad`` False; `mlip.finetune.freeze`) are not trained.
    """

    def __init__(
        self,
        potential: Potential,
        loss: EnergyForcesStressLoss,
        optimizer: str = "adam",
        lr: float = 0.01,
        amsgrad: bool = True,
        weight_decay: float = 0.0,
        weight_decay_params: list[str] | None = None,
        scheduler: str = "plateau",
        warmup_steps: int = 0,
        plateau_factor: float = 0.5,
        plateau_patience: int = 5,
        min_lr: float = 1e-5,
        ema_decay: float | None = 0.99,
        cuda_graphs: bool | str = "auto",
        cuda_graph_buckets: int = 16,
        cuda_graph_update: bool = True,
        max_nonfinite_steps: int = 10,
        nonfinite_check_every: int = 50,
        lr_factors: dict[str, float] | None = None,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be true, false or auto, got {cuda_graphs!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        # a plain list (not Hydra's ListConfig): checkpoints are read with weights_only
        weight_decay_params = None if weight_decay_params is None else [str(p) for p in weight_decay_params]
        lr_factors = None if not lr_factors else {str(k): float(v) for k, v in dict(lr_factors).items()}
        self.save_hyperparameters(ignore=["potential", "loss"])
        self.potential = potential
        self.loss = loss
        self.ema = ExponentialMovingAverage(potential, ema_decay) if ema_decay else None
        self.val_metrics = PotentialMetrics(potential.heads)
        self.test_metrics = PotentialMetrics(potential.heads)
        self.graphed_loss: GraphedLoss | None = None  # built at the first CUDA step
        self.graphed_evaluation: GraphedPotential | None = None  # built at the first CUDA validation
        self.graphed_update: GraphedUpdate | None = None  # built at the first graphed optimiser step
        self._in_graphed_update = False  # within a graphed update's closure (zero_grad and backward do nothing)
        self._released_graphs = {"captures": 0, "evictions": 0, "capture_s": 0.0}  # of graphs let go
        self.skipped_steps = 0  # non-finite steps skipped in this process (as of the last check)
        self._counters: torch.Tensor | None = None  # device: [skipped so far, skipped in a row]
        self._skipped: torch.Tensor | None = None  # device: 1.0 if this step is skipped
        self._gradients: tuple[list[torch.Tensor], torch.Tensor] | None = None  # this step's, and their norm
        self.last_train_loss: torch.Tensor | None = None  # device: the last training step's loss (progress bar)
        self._train_sums: torch.Tensor | None = None  # device: Σ size·(loss, terms) over this epoch's steps
        self._train_count, self._train_terms = 0, []
        self._steps_since_check = 0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict | None = None
        self._val_loss_sum, self._val_count = torch.zeros((), dtype=torch.float64), 0

    # -- ranks ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Under DDP, rank 0's training-set statistics are the run's: each rank receives them
        and stops with both shown if its own differ (another node read other data files)."""
        if self.trainer.world_size > 1:
            mine = self.potential.training_statistics()
            check_same_statistics(mine, self.trainer.strategy.broadcast(mine, src=0), self.global_rank)

    # -- captured graphs ---------------------------------------------------------------------
    def _graphed(self) -> bool:
        """Whether steps replay from CUDA graphs (`step_path`)."""
        return self.step_path()[0]

    def step_path(self) -> tuple[bool, str]:
        """(graphed, why): whether steps replay from CUDA graphs, and the reason in words."""
        setting = self.hparams.cuda_graphs
        if self.device.type != "cuda":
            return False, f"the model is on {self.device.type}, and CUDA graphs need a GPU"
        if setting is False:
            return False, "module.cuda_graphs=false"
        return True, "module.cuda_graphs=true" if setting is True else "on CUDA (module.cuda_graphs=auto)"

    def _budget(self, split: str) -> tuple[int, int, int] | None:
        """The data module's packing budget of ``split`` (atoms, edges, structures), if it packs."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        budget = getattr(datamodule, "batch_budget", None)
        return budget(split) if budget is not None else None

    def _shape(self, split: str) -> tuple[int, int, int] | None:
        budget = self._budget(split)
        return None if budget is None else static_shape(budget)

    def on_train_start(self) -> None:
        """Says in one line which path the steps take and why (with graphs: the padded shape);
        with graphed steps on unpacked batches, says before the first step when one epoch's
        batches span more padded sizes than the captured graphs kept."""
        if not self.trainer.is_global_zero:
            return
        graphed, why = self.step_path()
        datamodule = getattr(self.trainer, "datamodule", None)
        summary = getattr(datamodule, "packing_summary", lambda: None)()
        shape = self._shape("train")
        if graphed:
            where = (f"one padded shape of {shape[0]} atoms, {shape[1]} edges, {shape[2]} graphs" if shape is not None
                     else f"a graph per padded batch size, up to {self.hparams.cuda_graph_buckets} kept")
            log.info("training steps replay from CUDA graphs (%s): %s", why, where)
        else:
            log.info("training steps run eagerly: %s", why)
        if summary is not None:
            log.info("%s", summary)
        totals = datamodule.batch_totals("train") if graphed and shape is None and hasattr(datamodule, "batch_totals") else None
        if totals is None or not len(totals):
            return
        advice = padded_sizes_advice(totals, self.hparams.cuda_graph_buckets)
        if advice is not None:
            log.warning(advice)

    @property
    def copies_training_batches(self) -> bool:
        """Whether training steps take their batches on the host (the data module then leaves
        them there): the graphed step writes a batch, padding included, into a host image of
        its buffers and copies it in at once (`mlip.models.cuda_graph.PaddedInputs.fill`)."""
        return self._graphed()

    def _graphs_update(self) -> bool:
        """Whether the optimiser update replays from a graph too (``cuda_graph_update``)."""
        trainer = self.trainer
        return (self._graphed() and self.hparams.cuda_graph_update and trainer.accumulate_grad_batches == 1
                and (trainer.world_size == 1 or isinstance(trainer.strategy, DDPStrategy))
                and trainer.gradient_clip_algorithm in (None, "norm"))

    def release_training_graphs(self) -> None:
        """Drop the captured training steps (they hold the loss weights they were captured
        with); the next CUDA step captures again. Their capture counts stay in the totals."""
        if self.graphed_loss is not None:
            for key, value in self.graphed_loss.graphs.stats().items():
                self._released_graphs[key] += value
            self.graphed_loss = None

    def graph_capture_stats(self) -> dict[str, float]:
        """Padded sizes captured so far in this process (training steps and validation), sizes
        evicted to make room, and seconds spent capturing (`BucketedGraphs.stats`)."""
        stats = dict(self._released_graphs)
        for owner in (self.graphed_loss, self.graphed_evaluation):
            if owner is not None:
                for key, value in owner.graphs.stats().items():
                    stats[key] += value
        return stats

    # -- which weights answer ------------------------------------------------------------
    def evaluation_potential(self) -> Potential:
        """The EMA weights when EMA is on, else the live weights."""
        return self.ema.module if self.ema is not None else self.potential

    def _wants(self) -> dict[str, bool]:
        return {"compute_forces": bool(self.loss.weights["forces"]), "compute_stress": bool(self.loss.weights["stress"])}

    # -- steps ---------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._warm_up_learning_rate()
        if self._graphed():
            if self.graphed_loss is None:
                self.graphed_loss = GraphedLoss(
                    self.potential, self.loss, max_graphs=self.hparams.cuda_graph_buckets, check_elements=False,
                    world_size=self.trainer.world_size, into=self.graphed_update, shape=self._shape("train"),
                    **self._wants()
                )
            loss, terms = self.graphed_loss(batch, self._sum_over_ranks)
        else:
            # on CUDA the data module checked the elements on the CPU (the model's check reads the GPU)
            inputs = self.potential.inputs(batch, check_elements=not batch.positions.is_cuda)
            pred = self.potential.predict(*inputs, create_graph=True, **self._wants())
            world = self.trainer.world_size
            if world > 1:  # normalise by the global batch: DDP's mean gradient is then the 1-process one
                loss, terms = self.loss(pred, batch, self._sum_over_ranks, world)
            else:
                loss, terms = self.loss(pred, batch)
        self.last_train_loss = loss.detach()  # its finiteness is checked with the gradients, on the device
        # Lightning's self.log costs about 0.7 ms of host time a call: the epoch means are summed
        # here on the device and logged once an epoch, the step loss only at logging steps
        size = int(batch.num_graphs)
        values = torch.stack([self.last_train_loss, *(v.detach() for v in terms.values())]).to(torch.float64) * size
        self._train_sums = values if self._train_sums is None else self._train_sums + values
        self._train_count += size
        self._train_terms = list(terms)
        if logging_step(self.trainer):
            # not prog_bar=True: Lightning would read every progress-bar value from the GPU at
            # every later step's end (a host wait per step); the bar reads last_train_loss itself
            self.log("train_loss_step", self.last_train_loss, on_step=True, on_epoch=False)
        if self.trainer.is_last_batch:
            self._log_train_epoch()
        return loss

    def _sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the data-parallel ranks, in place (queued on the device, not waited for)."""
        return self._all_reduce(tensor, torch.distributed.ReduceOp.SUM)

    def _all_reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        """An in-place all-reduce over the ranks; nothing with one process. Not Lightning's
        ``strategy.reduce``, which puts a barrier before every all-reduce: an NCCL barrier makes
        the host wait for the GPU, and these run at every training step."""
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(tensor, op=op)
        return tensor

    # -- non-finite steps (decided on the device, read on the host every few steps) --------
    def on_before_optimizer_step(self, optimizer) -> None:
        gradients = [p.grad for p in self.potential.parameters() if p.grad is not None]
        if not gradients:
            return
        norm = global_norm(gradients)
        self._gradients = (gradients, norm)  # the clipping below reuses the norm
        finite = torch.isfinite(norm) & torch.isfinite(self.last_train_loss)
        finite = self._all_reduce(finite.to(torch.float32), torch.distributed.ReduceOp.MIN)  # every rank alike
        self._skipped = 1.0 - finite
        # the fused Adam/AdamW step leaves weights and state alone where found_inf is 1
        getattr(optimizer, "optimizer", optimizer).found_inf = self._skipped
        if logging_step(self.trainer):
            self.log("grad_norm", norm, on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping by norm, as `torch.nn.utils.clip_grad_norm_`, with the norm the finite check
        just computed: one pass over the gradients instead of two (other algorithms: Lightning's)."""
        gradients, self._gradients = self._gradients, None
        if not gradient_clip_val or gradient_clip_algorithm not in (None, "norm") or gradients is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        tensors, norm = gradients
        clip_by_norm_(tensors, norm, gradient_clip_val)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        if self._graphs_update():
            update = self._graphed_update_for(getattr(optimizer, "optimizer", optimizer))
            # no DDP reducer: the update sums the gradients over the ranks itself
            ddp_sync_off = self.trainer.strategy.block_backward_sync() if self.trainer.world_size > 1 else nullcontext()
            self._in_graphed_update = True
            try:  # training_step: the loss graph leaves loss and gradients in the update's buffers
                with ddp_sync_off:
                    optimizer_closure()
            finally:
                self._in_graphed_update = False
            update.step()  # norm, finite check, clipping, optimiser, EMA, counters: one replay
            if logging_step(self.trainer):
                self.log("grad_norm", update.norm.clone(), on_step=True, on_epoch=False)
        else:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # closure, hooks, step
            if self._skipped is None:  # no gradients at all
                return
            skipped, self._skipped = self._skipped, None
            # here, not in on_train_batch_end: checkpoint callbacks run before the module's
            # hooks there, and a step checkpoint must hold the EMA of the step it records
            self._after_update(skipped)
        self._steps_since_check += 1
        if self._steps_since_check >= self.hparams.nonfinite_check_every:
            self._check_nonfinite(self.global_step + 1)  # Lightning counts this step after the hook

    def _after_update(self, skipped: torch.Tensor) -> None:
        """The EMA and the skip counters after an optimiser step (device work only: it is captured
        with the graphed update); ``skipped``: 1.0 where the step was skipped."""
        if self.ema is not None:
            self.ema.update(self.potential, skipped)
        skipped = skipped.to(torch.long)
        if self._counters is None:  # created by the first, eager, update: a capture never allocates it
            self._counters = torch.zeros(2, dtype=torch.long, device=skipped.device)
        self._counters[0] += skipped
        self._counters[1] = (self._counters[1] + 1) * skipped

    def _graphed_update_for(self, optimizer: torch.optim.Optimizer) -> GraphedUpdate:
        """The graphed update of this optimiser; a new one (and new loss graphs, which write
        into its buffers) when the optimiser is new."""
        if self.graphed_update is None or self.graphed_update.optimizer is not optimizer:
            self.release_training_graphs()
            self.graphed_update = GraphedUpdate(optimizer, self.trainer.gradient_clip_val, after=[self._after_update],
                                                world_size=self.trainer.world_size,
                                                sum_over_ranks=self._sum_over_ranks)
        return self.graphed_update

    # the graphed update owns the gradient buffers: Lightning must neither reset nor fill them
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if not self._in_graphed_update:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if not self._in_graphed_update:
            super().backward(loss, *args, **kwargs)

    def on_train_epoch_end(self) -> None:
        self._log_train_epoch()  # if the epoch ended before its last batch (limit_train_batches, max_steps)
        self._check_nonfinite(self.global_step)

    def _log_train_epoch(self) -> None:
        """The epoch's mean training loss and terms over its structures (``train_loss_epoch``, ``train_loss_<term>``)."""
        if self._train_sums is None:
            return
        means = self._train_sums / self._train_count
        self.log("train_loss_epoch", means[0], on_step=False, on_epoch=True)
        for name, value in zip(self._train_terms, means[1:]):
            self.log(f"train_loss_{name}", value, on_step=False, on_epoch=True)
        self._train_sums, self._train_count = None, 0

    def _check_nonfinite(self, step: int) -> None:
        """Warn about the steps skipped since the last check (up to ``step``); stop after too many in a row."""
        steps, self._steps_since_check = self._steps_since_check, 0
        if self._counters is None:
            return
        total, in_a_row = (int(v) for v in self._counters.tolist())  # the one host read
        if total > self.skipped_steps:
            log.warning("steps %d-%d: %d with a non-finite loss or gradient skipped (%d skipped so far, %d in a row)",
                        step - steps + 1, step, total - self.skipped_steps, total, in_a_row)
        self.skipped_steps = total
        if in_a_row >= self.hparams.max_nonfinite_steps:
            path = Path(self.trainer.default_root_dir) / "checkpoints" / NONFINITE_CHECKPOINT
            self.trainer.save_checkpoint(path)
            raise NonFiniteLossError(
                f"{in_a_row} training steps in a row had a non-finite loss or gradient (the last at step "
                f"{step}); the weights of the last good step are in {path}. "
                "Lower the learning rate, check the labels for outliers, or use module.loss.kind=huber."
            )

    def _evaluate(self, batch: Any, metrics: PotentialMetrics, stage: str) -> dict[str, torch.Tensor]:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("forces need autograd during evaluation: build the Trainer with inference_mode=False")
        with torch.enable_grad():
            # replayed, as the training step; a multi-head model's batches (fine-tuning's held-out
            # replay structures) name each structure's head, which the replayed graph does not read
            if self._graphed() and getattr(batch, "head", None) is None:
                if self.graphed_evaluation is None:
                    self.graphed_evaluation = GraphedPotential(
                        self.evaluation_potential(), max_graphs=self.hparams.cuda_graph_buckets, check_elements=False,
                        shape=self._shape("val"),
                    )
                pred = self.graphed_evaluation(batch)
            else:
                pred = self.evaluation_potential()(batch, compute_forces=True, compute_stress=True)
        pred = {k: v.detach() for k, v in pred.items()}
        loss, _ = self.loss(pred, batch)
        # every rank must see the same val_loss (checkpointing and the plateau scheduler follow it)
        self.log(f"{stage}_loss", loss, batch_size=int(batch.num_graphs), prog_bar=stage == "val", sync_dist=True)
        metrics.update(pred, batch)
        if stage == "val":  # the plateau scheduler's input: a mean over structures, all ranks
            self._val_loss_sum += loss.detach().to(torch.float64) * int(batch.num_graphs)
            self._val_count += int(batch.num_graphs)
        return pred  # for callbacks (parity plots)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: PotentialMetrics, stage: str) -> None:
        for name, value in metrics.compute().items():
            self.log(f"{stage}_{name}", value, prog_bar=name == "forces_rmse")
        metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = 0

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")
        # The plateau scheduler steps here, not where Lightning would (after the epoch-end
        # checkpoint, and not at all in an epoch resumed part-way): so last.ckpt holds the
        # scheduler state of the epoch it records, and every resume continues it exactly.
        if self.plateau is not None and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            totals = torch.stack([self._val_loss_sum, self._val_loss_sum.new_tensor(float(self._val_count))])
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
            self.plateau.step(float(totals[0] / totals[1].clamp(min=1.0)))

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    # -- optimisation --------------------------------------------------------------------
    def _warm_up_learning_rate(self) -> None:
        steps = self.hparams.warmup_steps
        if steps and self.global_step < steps:
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = self.hparams.lr * group.get("lr_factor", 1.0) * (self.global_step + 1) / steps

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # fused: one kernel per step, and it honours found_inf (skipped steps, on_before_optimizer_step)
        kwargs = {"lr": hp.lr, "weight_decay": hp.weight_decay, "amsgrad": hp.amsgrad, "fused": True}
        optimizer = OPTIMIZERS[hp.optimizer](self.parameter_groups(), **kwargs)
        if hp.scheduler == "plateau":  # stepped by on_validation_epoch_end, saved by on_save_checkpoint
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=hp.plateau_factor, patience=hp.plateau_patience, min_lr=hp.min_lr
            )
            if self._plateau_state is not None:
                self.plateau.load_state_dict(self._plateau_state)
            return {"optimizer": optimizer}
        if hp.scheduler == "cosine":
            total = max(int(self.trainer.estimated_stepping_batches), hp.warmup_steps + 1)
            floor = hp.min_lr / hp.lr

            def factor(step: int) -> float:
                progress = min(1.0, max(0.0, (step - hp.warmup_steps) / (total - hp.warmup_steps)))
                return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": optimizer}

    def parameter_groups(self) -> list[dict]:
        """The optimiser's groups of the trainable parameters (frozen ones, ``requires_grad``
        False, are left out): with ``weight_decay_params``, the matching parameters decay and
        the others do not; with ``lr_factors``, each block's parameters run at ``lr`` times
        its factor (``lr_factor`` in the group, which warm-up and stage two honour)."""
        patterns = self.hparams.weight_decay_params
        named = [(name, p) for name, p in self.potential.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("every parameter of the model is frozen: nothing to train")
        factors = dict(self.hparams.lr_factors or {})

        def in_block(name: str, prefix: str) -> bool:
            block = name.removeprefix("model.")
            return block == prefix or block.startswith(f"{prefix}.")

        def factor_of(name: str) -> float:
            return next((float(f) for prefix, f in factors.items() if in_block(name, prefix)), 1.0)

        unknown = [prefix for prefix in factors if not any(in_block(name, prefix) for name, _ in named)]
        if unknown:
            raise ValueError(f"lr_factors {unknown} name no trainable block of the model")
        if patterns is None:
            decaying = {"": [p for _, p in named]}
        else:
            decay = [p for name, p in named if any(re.search(pattern, name) for pattern in patterns)]
            if not decay:
                raise ValueError(f"weight_decay_params {list(patterns)} match no parameter of the model")
            chosen = {id(p) for p in decay}
            decaying = {"decay": decay, "no_decay": [p for _, p in named if id(p) not in chosen]}
        factor_by_id = {id(p): factor_of(name) for name, p in named}
        groups = []
        for kind, params in decaying.items():
            for factor in sorted({factor_by_id[id(p)] for p in params}, reverse=True):
                members = [p for p in params if factor_by_id[id(p)] == factor]
                group = {"params": members}
                if kind:
                    group["name"] = kind if factor == 1.0 else f"{kind}_x{factor:g}"
                if kind == "no_decay":
                    group["weight_decay"] = 0.0
                if factor != 1.0:
                    group.update(lr=self.hparams.lr * factor, lr_factor=factor)
                groups.append(group)
        return groups

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mlip_model_spec"] = self.potential.model_spec
        if self.plateau is not None:
            checkpoint["mlip_plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints from before the fused optimiser: their groups would switch it off again,
        # and the unfused step refuses found_inf (Lightning restores the optimiser after this hook)
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group.update(fused=True, foreach=None)
        self._plateau_state = checkpoint.get("mlip_plateau")
        if self.plateau is not None and self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
