"""The training loop on CUDA: steps skipped on the device, validation and test replayed from graphs."""

import pytest
import torch

from mlip.cli.train import train
from mlip.training.module import NonFiniteLossError
from tests.conftest import compose_train_config
from tests.training.test_nonfinite import TARGET

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
GPU = ["trainer=gpu", "trainer.enable_progress_bar=false"]


def test_graphed_run_equals_the_eager_run_in_float64(tmp_path, emt_file):
    """Training steps, validation and test replayed from CUDA graphs give the eager run's metrics."""
    metrics = {}
    for graphs in (False, True):
        cfg = compose_train_config(tmp_path / str(graphs), emt_file, *GPU, "dtype=float64", "trainer.max_epochs=2",
                                   f"module.cuda_graphs={str(graphs).lower()}")
        metrics[graphs] = train(cfg)
    assert metrics[True].keys() == metrics[False].keys() and "test_forces_rmse" in metrics[True]
    for key, value in metrics[False].items():
        assert metrics[True][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_nonfinite_steps_are_skipped_on_the_device(tmp_path, emt_file):
    cfg = compose_train_config(tmp_path, emt_file, *GPU, "trainer.max_epochs=2", TARGET, "+module.loss.nan_from=5",
                               "module.max_nonfinite_steps=3", "module.nonfinite_check_every=4")
    with pytest.raises(NonFiniteLossError, match=r"training steps in a row had a non-finite loss"):
        train(cfg)
    stopped = torch.load(tmp_path / "checkpoints" / "nonfinite-stop.ckpt", map_location="cpu", weights_only=False)
    assert stopped["state_dict"]["ema.num_updates"] == 5  # the skipped steps left the average alone
    assert all(torch.isfinite(v).all() for v in stopped["state_dict"].values() if v.is_floating_point())
    steps = {int(s["step"]) for s in stopped["optimizer_states"][0]["state"].values()}
    assert steps == {5}  # and the optimiser's state


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("update", ["graphed", "eager"])
def test_two_gpus_match_one_with_graphs(tmp_path, emt_file, update):
    """DDP over NCCL with the graphed steps (flat gradient all-reduce before the update graph,
    or DDP's hooks with the eager update) trains like one GPU on the same global batches."""
    from tests.training.test_distributed import _run, _same_runs

    graphs = [*GPU, "module.cuda_graphs=true", f"module.cuda_graph_update={str(update == 'graphed').lower()}"]
    _run(tmp_path / "one", emt_file, "data.batch_size=8", *graphs)
    _run(tmp_path / "two", emt_file, "data.batch_size=4", "trainer=ddp", "trainer.devices=2", *graphs[1:])
    _same_runs(tmp_path)
