"""Checkpoint-and-stop on the signals a cluster sends before it kills a job.

SLURM sends SIGTERM at preemption or at the time limit (and, with
``#SBATCH --signal=USR1@120``, SIGUSR1 that many seconds earlier). On either signal
`PreemptionCheckpoint` writes ``step.ckpt`` at the end of the current batch (so the work
of the epoch so far is kept), asks SLURM to requeue the job when it runs under SLURM,
and exits the way Lightning does on SIGTERM (`SIGTERMException`, status 0), without
the epoch-end hooks that would mark the unfinished epoch as done. The requeued job, started with ``resume=auto`` in the same run folder,
continues from that checkpoint exactly (`newest_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlip.training.checkpoint_io import StepCheckpoint, wait_for_checkpoints

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Callback):
    """On SIGTERM or SIGUSR1: save ``step.ckpt`` after the current batch, requeue under SLURM, stop.

    Args:
        dirpath: the checkpoint folder.
        requeue: run ``scontrol requeue $SLURM_JOB_ID`` (only when SLURM_JOB_ID is set).
    """

    def __init__(self, dirpath: str | os.PathLike, requeue: bool = True):
        self.path = Path(dirpath) / StepCheckpoint.FILENAME
        self.requeue = requeue
        self.signalled: int | None = None
        self.saved = False
        self._previous = None

    def on_fit_start(self, trainer, pl_module) -> None:
        # SIGUSR1 is ours; SIGTERM Lightning also watches (trainer.received_sigterm), ours runs beside it
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
        for s in self._previous:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _save_and_requeue(self, trainer) -> None:
        name = signal.Signals(self.signalled or signal.SIGTERM).name
        trainer.save_checkpoint(self.path)
        wait_for_checkpoints(trainer)  # on disk before the requeue, which ends this job
        self.saved = True
        log.warning("%s received: saved %s at step %d, stopping", name, self.path, trainer.global_step)
        job = os.environ.get("SLURM_JOB_ID")
        if self.requeue and job and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.warning("scontrol requeue %s: %s", job, (result.stdout + result.stderr).strip() or f"exit {result.returncode}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signalled is None and not trainer.received_sigterm:
            return
        self._save_and_requeue(trainer)
        # exit now, as Lightning does on SIGTERM: a graceful stop would run the epoch's end and
        # write a last.ckpt that counts this epoch as done
        raise SIGTERMException()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        # a SIGTERM between batches (validation, epoch end): Lightning exits at the epoch's end,
        # whose state is whole, so that is what is saved
        if isinstance(exception, SIGTERMException) and not self.saved and trainer.received_sigterm:
            self._save_and_requeue(trainer)
        self._restore()

    def _restore(self) -> None:
        for s, handler in (self._previous or {}).items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = None
