"""The optimiser update captured as a CUDA graph equals the same update run eagerly, on the device machine."""

import pytest
import torch

from mlip.training.cuda_graph_update import GraphedUpdate
from mlip.training.ema import ExponentialMovingAverage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _train(capture: bool, dtype: torch.dtype):
    """Ten steps: a NaN loss at step 3, a new learning rate from step 5, the model moved off the
    GPU and back before step 7 (every address changes: captured again)."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1)).to("cuda", dtype)
    x = torch.randn(64, 6, device="cuda", dtype=dtype)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01, amsgrad=True, weight_decay=1e-3, fused=True)
    ema = ExponentialMovingAverage(network, 0.9)
    update = GraphedUpdate(optimizer, max_norm=1.0, after=[lambda skipped: ema.update(network, skipped)], capture=capture)
    for step in range(10):
        if step == 5:
            optimizer.param_groups[0]["lr"] = 0.002
        if step == 7:
            network.cpu()
            network.cuda()
        loss = (network(x) ** 2).mean() * 100
        gradients = torch.autograd.grad(loss, list(network.parameters()))
        torch._foreach_copy_([update.gradient_of(p) for p in network.parameters()], list(gradients))
        update.loss.copy_(loss.detach() * (float("nan") if step == 3 else 1.0))
        update.step()
    torch.cuda.synchronize()
    return [p.detach().clone() for p in network.parameters()], ema, optimizer, update


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_captured_update_equals_the_eager_one(dtype):
    weights, ema, optimizer, update = _train(True, dtype)
    reference_weights, reference_ema, reference_optimizer, _ = _train(False, dtype)
    assert update.captures == 2  # at the first step, and after the move
    for a, b in zip(weights, reference_weights):
        torch.testing.assert_close(a, b)
    for a, b in zip(ema.module.parameters(), reference_ema.module.parameters()):
        torch.testing.assert_close(a, b)
    assert int(ema.num_updates) == int(reference_ema.num_updates) == 9  # the NaN step skipped
    for p, q in zip(optimizer.param_groups[0]["params"], reference_optimizer.param_groups[0]["params"]):
        assert float(optimizer.state[p]["step"]) == 9.0
        torch.testing.assert_close(optimizer.state[p]["max_exp_avg_sq"], reference_optimizer.state[q]["max_exp_avg_sq"])
    assert optimizer.param_groups[0]["lr"] == 0.002 and not optimizer.param_groups[0]["capturable"]
