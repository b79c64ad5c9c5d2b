"""A training run killed (SIGKILL) at a random step and resumed equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlip.cli.train import train
from mlip.training.checkpoint_io import newest_checkpoint
from tests.conftest import compose_train_config

ROOT = Path(__file__).resolve().parents[2]
# 32 training structures in batches of 4: 8 steps per epoch, 16 in all; last.ckpt after every step
OVERRIDES = ["trainer.max_epochs=2", "dtype=float64", "step_checkpoint.every_n_train_steps=1"]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _kill_at_step(run_dir: Path, emt_file: str, step: int) -> dict:
    """Start a training in a subprocess and SIGKILL it once a checkpoint has reached ``step``."""
    code = ("import sys; sys.path.insert(0, {root!r}); from tests.conftest import compose_train_config; "
            "from mlip.cli.train import train; train(compose_train_config({run!r}, {emt!r}, *{over!r}))").format(
        root=str(ROOT), run=str(run_dir), emt=emt_file, over=OVERRIDES)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            newest = newest_checkpoint(run_dir / "checkpoints")  # files are renamed into place whole
            if newest is not None and _load(newest)["global_step"] >= step:
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = _load(newest_checkpoint(run_dir / "checkpoints"))
    assert state["global_step"] < 16, "the run finished before it could be killed"
    return state


@pytest.mark.parametrize("when", ["random", "epoch boundary"])
def test_sigkill_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path, emt_file, when):
    # a random step each run, and around the end of epoch 0 (its last batch is not step-checkpointed)
    step = int(np.random.default_rng(int.from_bytes(os.urandom(2), "little")).integers(2, 14)) if when == "random" else 8
    killed = _kill_at_step(tmp_path / "killed", emt_file, step)
    print(f"killed at step {killed['global_step']} (asked for {step})")
    (tmp_path / "killed" / "checkpoints" / ".step.ckpt.99999.tmp").write_bytes(b"torn")  # as a kill mid-write leaves
    train(compose_train_config(tmp_path / "killed", emt_file, *OVERRIDES, "resume=auto"))
    assert not list((tmp_path / "killed").rglob("*.tmp")), "a resume clears the dead run's temporary files"
    train(compose_train_config(tmp_path / "straight", emt_file, *OVERRIDES))
    resumed = _load(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    reference = _load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 16
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():  # live weights, EMA weights and EMA counter
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-12, atol=1e-12, msg=key)
    for a, b in zip(resumed["optimizer_states"][0]["state"].values(), reference["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-12, atol=1e-15)
    assert resumed["mlip_plateau"] == reference["mlip_plateau"] and reference["mlip_plateau"]["last_epoch"] == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_mid_epoch_and_the_resume_is_exact(tmp_path, emt_file, signum):
    _preempt_and_resume(tmp_path, emt_file, signum, ["trainer.max_epochs=3", "dtype=float64", "step_checkpoint=null"])


def test_a_mid_epoch_resume_inside_stage_two_is_exact(tmp_path, emt_file):
    # Lightning calls no on_train_epoch_start for an epoch resumed part-way: StageTwo must
    # apply its weights from on_train_start as well
    stage = ("stage_two={_target_: mlip.training.stage_two.StageTwo, start_epoch: 1, energy_weight: 50.0,"
             " forces_weight: 1.0, lr: 2.0e-4}")
    _preempt_and_resume(tmp_path, emt_file, signal.SIGTERM,
                        ["trainer.max_epochs=3", "dtype=float64", "step_checkpoint=null", stage])


def _preempt_and_resume(tmp_path, emt_file, signum, over: list[str]) -> None:
    """Stop a run by ``signum`` during epoch 1, resume it, and compare with an uninterrupted run."""
    code = ("import sys; sys.path.insert(0, {root!r}); from tests.conftest import compose_train_config; "
            "from mlip.cli.train import train; train(compose_train_config({run!r}, {emt!r}, *{over!r}))").format(
        root=str(ROOT), run=str(tmp_path / "run"), emt=emt_file, over=over)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "stderr.txt", "w"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)  # during epoch 1 (epoch 0 has ended: last.ckpt exists)
    assert process.wait(timeout=300) >= 0, "the run died of the signal instead of stopping"
    saved = _load(tmp_path / "run" / "checkpoints" / "step.ckpt")  # after a batch, or at the epoch's end
    assert 8 <= saved["global_step"] < 24
    train(compose_train_config(tmp_path / "run", emt_file, *over, "resume=auto"))
    train(compose_train_config(tmp_path / "straight", emt_file, *over))
    resumed = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    reference = _load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 24
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-12, atol=1e-12, msg=key)


def test_background_checkpoint_writes_hold_the_state_of_the_save_and_report_failures(tmp_path):
    from mlip.training.checkpoint_io import BackgroundCheckpointIO

    io = BackgroundCheckpointIO()
    weights = torch.arange(1_000_000, dtype=torch.float64)
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 3}, tmp_path / "a.ckpt")
    weights.zero_()  # training goes on at once: the file must hold the state at the save
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 4}, tmp_path / "b.ckpt")
    io.wait()
    first = torch.load(tmp_path / "a.ckpt", weights_only=False)
    assert first["global_step"] == 3 and torch.equal(first["state_dict"]["w"], torch.arange(1_000_000.0).double())
    assert torch.load(tmp_path / "b.ckpt", weights_only=False)["state_dict"]["w"].abs().sum() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]  # no temporaries left
    io.save_checkpoint({"w": weights}, tmp_path / "c.ckpt")
    io.remove_checkpoint(tmp_path / "c.ckpt")  # removed after its write, not before
    io.wait()
    assert not (tmp_path / "c.ckpt").exists()
    (tmp_path / "file").write_text("not a folder")
    io.save_checkpoint({"w": weights}, tmp_path / "file" / "c.ckpt")  # fails in the thread ...
    with pytest.raises(OSError):
        io.teardown()  # ... and is raised where the trainer waits
