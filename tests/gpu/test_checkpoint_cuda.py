"""Background checkpoint writes of GPU state: a host snapshot queued on the stream."""

import pytest
import torch

from mlip.training.checkpoint_io import BackgroundCheckpointIO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_checkpoint_of_gpu_tensors_holds_the_state_of_the_save(tmp_path):
    io = BackgroundCheckpointIO()
    weights = torch.arange(4_000_000, dtype=torch.float32, device="cuda")
    torch.cuda._sleep(100_000_000)  # the GPU busy: the snapshot's copies queue behind this
    io.save_checkpoint({"state_dict": {"w": weights, "step": torch.tensor(3.0, device="cuda")}}, tmp_path / "a.ckpt")
    weights.zero_()  # queued after the copies: the file must not see it
    io.wait()
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=False)["state_dict"]
    assert loaded["w"].device.type == "cpu" and loaded["step"].item() == 3.0
    assert torch.equal(loaded["w"], torch.arange(4_000_000, dtype=torch.float32))
    assert weights.abs().sum().item() == 0
    io.teardown()
