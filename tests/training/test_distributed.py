"""Two CPU processes (DDP over gloo) train like one process on the same global batches."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["trainer.max_epochs=2", "dtype=float64", "data.val_batch_size=2", "step_checkpoint=null", "preemption=null"]


def _run(run_dir: Path, emt_file: str, *overrides: str) -> None:
    # a script file: Lightning's DDP launcher starts rank 1 by running the same script again
    script = run_dir.parent / f"{run_dir.name}.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.conftest import compose_train_config\nfrom mlip.cli.train import train\n"
        f"train(compose_train_config({str(run_dir)!r}, {emt_file!r}, *{list(COMMON + list(overrides))!r}))\n"
    )
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _same_runs(tmp_path) -> None:
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert one["global_step"] == two["global_step"] == 8
    for key, value in one["state_dict"].items():  # gradients summed in another order only
        torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-9, atol=1e-11, msg=key)
    # validation/test metrics: sums over structures reduced across ranks, not means of rank means
    m1 = json.loads((tmp_path / "one" / "test_metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "test_metrics.json").read_text())
    assert m1.keys() == m2.keys() and "test_forces_rmse" in m1
    for key in m1:
        if key != "test_loss":  # the logged loss is a mean of per-rank batch means
            assert abs(m1[key] - m2[key]) <= 1e-9 * abs(m1[key]) + 1e-12, key


def test_two_gloo_processes_match_one_process(tmp_path, emt_file):
    # 32 training structures: 4 per rank on 2 ranks is the same global batch of 8 as one process
    # (each rank takes every other structure of the epoch's permutation)
    _run(tmp_path / "one", emt_file, "data.batch_size=8")
    _run(tmp_path / "two", emt_file, "data.batch_size=4", "trainer.devices=2", "+trainer.strategy=ddp")
    _same_runs(tmp_path)


def test_two_gloo_processes_through_the_graphed_update_match_one_process(tmp_path, emt_file):
    """The graphed path (run eagerly on the CPU): no DDP reducer, the flat gradient buffer and
    the loss summed over the ranks by the update, divided by the world size in its graph."""
    graphed = ["module._target_=tests.training.test_cuda_graph_update.GraphedOnCPU", "module.cuda_graphs=true"]
    _run(tmp_path / "one", emt_file, "data.batch_size=8", *graphed)
    _run(tmp_path / "two", emt_file, "data.batch_size=4", "trainer.devices=2", "+trainer.strategy=ddp", *graphed)
    _same_runs(tmp_path)


def test_a_rank_with_other_statistics_stops_the_run(tiny_potential):
    from mlip.data.structure import DataError
    from mlip.training.module import check_same_statistics

    rank0 = tiny_potential.training_statistics()
    assert rank0["avg_num_neighbors"] == 12.0 and len(rank0["e0s"]) == 3
    check_same_statistics(dict(rank0), rank0, rank=1)  # equal: nothing happens
    other = dict(rank0, avg_num_neighbors=12.5, e0s=[e + 1e-3 for e in rank0["e0s"]])
    with pytest.raises(DataError, match=r"rank 1 .*avg_num_neighbors: rank 0 12.0, rank 1 12.5"):
        check_same_statistics(other, rank0, rank=1)
    with pytest.raises(DataError, match="elements"):
        check_same_statistics(dict(rank0, elements=[28, 29]), rank0, rank=1)
