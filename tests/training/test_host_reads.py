"""A graphed training step reads no tensor back to the host, except at logging steps and
epoch ends: on a GPU each such read waits for all queued work (the progress-bar read of
session seven cost 1.5 ms a step). On the CPU the reads are counted where they happen:
conversions of tensors to Python values outside the data pipeline (whose reads are of CPU
tensors by design: collation, the element check before the copy)."""

import traceback

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mlip.cli.train import train
from mlip.training.monitoring import logging_step
from tests.conftest import compose_train_config
from tests.training.test_cuda_graph_update import GRAPHED

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
DATA_CODE = ("/mlip/data/", "/torch/utils/data/")


class ReadsPerStep(Callback):
    """From one step's start to the next: the reads, and whether the step logged."""

    steps: list = []
    current: list | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # steps of the second epoch (the first one captures and pairs), logging steps marked
        if trainer.current_epoch == 1:
            logging = logging_step(trainer)
            ReadsPerStep.current = []
            ReadsPerStep.steps.append((batch_idx, logging, ReadsPerStep.current))
        else:
            ReadsPerStep.current = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        ReadsPerStep.current = None


@pytest.fixture
def counted_reads(monkeypatch):
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, __original=original, __name=name, **kwargs):
            if ReadsPerStep.current is not None:
                stack = traceback.extract_stack()[:-1]
                if not any(part in frame.filename for frame in stack for part in DATA_CODE):
                    ReadsPerStep.current.append(f"{__name} @ {stack[-2].filename}:{stack[-2].lineno}")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    ReadsPerStep.steps = []
    return ReadsPerStep


def test_graphed_steps_read_nothing_back_between_logging_steps(tmp_path, emt_file, counted_reads):
    cfg = compose_train_config(tmp_path, emt_file, *GRAPHED, "trainer.log_every_n_steps=3",
                               "module.nonfinite_check_every=100", "trainer.enable_progress_bar=true",
                               "+monitoring.reads._target_=tests.training.test_host_reads.ReadsPerStep")
    train(cfg)
    steps = counted_reads.steps
    assert len(steps) == 8 and any(logging for _, logging, _ in steps)
    # the step after a logging step is where a value kept for the progress bar would be read
    quiet = {index: reads for index, logging, reads in steps if not logging and index < 7}  # 7: the epoch end
    assert quiet and all(not reads for reads in quiet.values()), quiet
