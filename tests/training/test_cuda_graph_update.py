"""The graphed optimiser update, run eagerly on the CPU: the same update as clipping, torch's
fused Adam and the EMA launched one by one, and a whole training run through it equal to the
eager run. (The capture itself is checked on the GPU: tests/gpu/test_cuda_graph_update.py.)"""

import logging

import pytest
import torch

from mlip.cli.train import train
from mlip.training.cuda_graph_update import GraphedUpdate
from mlip.training.ema import ExponentialMovingAverage
from mlip.training.module import PotentialModule
from tests.conftest import compose_train_config
from tests.training.test_nonfinite import TARGET


class GraphedOnCPU(PotentialModule):
    """The module's graphed path (padded buffers, `GraphedLoss`, `GraphedUpdate`) on the CPU,
    where its graphs run eagerly: the code a GPU run captures, checkable here."""

    def _graphed(self) -> bool:
        return self.hparams.cuda_graphs


GRAPHED = ["module._target_=tests.training.test_cuda_graph_update.GraphedOnCPU", "module.cuda_graphs=true"]


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def _optimizer(network, kind):
    decay, rest = [network[0].weight], [p for name, p in network.named_parameters() if name != "0.weight"]
    groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
    return kind(groups, lr=0.01, weight_decay=1e-2, amsgrad=True, fused=True)


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW])
def test_the_update_is_clipping_the_fused_step_and_the_ema(kind):
    """Six steps: the third has a NaN loss (skipped: no weight, state or EMA change), the
    learning rate changes before the fifth; weights, optimiser state and average stay equal to
    clip_grad_norm_ + optimizer.step() + ema.update to float64 round-off (the graphed learning
    rate is a float32 scalar)."""
    x = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mine, reference = _network(), _network()
    optimizer, reference_optimizer = _optimizer(mine, kind), _optimizer(reference, kind)
    ema, reference_ema = ExponentialMovingAverage(mine, 0.9), ExponentialMovingAverage(reference, 0.9)
    update = GraphedUpdate(optimizer, max_norm=1.0, after=[lambda skipped: ema.update(mine, skipped)])
    for step in range(6):
        if step == 4:
            for group in optimizer.param_groups + reference_optimizer.param_groups:
                group["lr"] = 0.003
        loss = (mine(x) ** 2).mean() * 100
        gradients = torch.autograd.grad(loss, list(mine.parameters()))
        torch._foreach_copy_([update.gradient_of(p) for p in mine.parameters()], list(gradients))
        update.loss.copy_(loss.detach() * (float("nan") if step == 2 else 1.0))
        update.step()
        assert float(update.skipped) == (1.0 if step == 2 else 0.0)
        if step != 2:
            reference_optimizer.zero_grad()
            (reference(x) ** 2).mean().mul(100).backward()
            norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
            assert float(update.norm) == pytest.approx(float(norm), rel=1e-7)
            reference_optimizer.step()
            reference_ema.update(reference)
        for a, b in zip(mine.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=5e-9)  # float32 lr: 6e-8 of each update
        for a, b in zip(ema.module.parameters(), reference_ema.module.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=5e-9)  # float32 lr: 6e-8 of each update
    assert int(ema.num_updates) == int(reference_ema.num_updates) == 5
    for p, q in zip(mine.parameters(), reference.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            torch.testing.assert_close(optimizer.state[p][key], reference_optimizer.state[q][key], rtol=1e-6, atol=1e-7)
    # what schedulers, Lightning and checkpoints see is left as it was
    saved = optimizer.state_dict()["param_groups"]
    assert [g["lr"] for g in saved] == [0.003, 0.003] and not any(g["capturable"] for g in saved)
    assert getattr(optimizer, "found_inf", None) is None


def test_the_update_needs_a_fused_optimiser():
    network = _network()
    with pytest.raises(ValueError, match="fused"):
        GraphedUpdate(torch.optim.Adam(network.parameters(), lr=0.01, foreach=True))


def _last_checkpoint(path):
    return torch.load(path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_a_run_through_the_graphed_update_equals_the_eager_run(tmp_path, emt_file, scheduler):
    """Lightning's loop with the graphed path (no zero_grad, no backward, the update from
    `GraphedUpdate`) gives the eager run's metrics, steps, EMA count and optimiser state;
    the learning rate set per step (warm-up, then the cosine schedule) reaches the update."""
    metrics, states = {}, {}
    for name, extra in (("eager", []), ("graphed", GRAPHED)):
        cfg = compose_train_config(tmp_path / name, emt_file, "dtype=float64", f"module.scheduler={scheduler}", *extra)
        metrics[name], states[name] = train(cfg), _last_checkpoint(tmp_path / name)
    assert metrics["graphed"].keys() == metrics["eager"].keys() and "test_forces_rmse" in metrics["eager"]
    for key, value in metrics["eager"].items():
        assert metrics["graphed"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert states["graphed"]["global_step"] == states["eager"]["global_step"] == 16
    assert states["graphed"]["state_dict"]["ema.num_updates"] == 16
    graphed, eager = (s["optimizer_states"][0] for s in (states["graphed"], states["eager"]))
    assert [g["lr"] for g in graphed["param_groups"]] == pytest.approx([g["lr"] for g in eager["param_groups"]])
    assert not any(g["capturable"] for g in graphed["param_groups"])
    for k, state in eager["state"].items():
        torch.testing.assert_close(graphed["state"][k]["exp_avg"], state["exp_avg"], rtol=1e-5, atol=1e-9)


def test_skipped_steps_under_the_graphed_update_are_counted_as_in_the_eager_run(tmp_path, emt_file, caplog):
    """The NaN steps of test_nonfinite, through the graphed path: the same warnings, step and EMA counts."""
    cfg = compose_train_config(tmp_path, emt_file, TARGET, "+module.loss.nan_steps=[3,4,11]",
                               "module.nonfinite_check_every=4", *GRAPHED)
    with caplog.at_level(logging.WARNING, logger="mlip.training.module"):
        train(cfg)
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert warnings == ["steps 1-4: 1 with a non-finite loss or gradient skipped (1 skipped so far, 1 in a row)",
                        "steps 5-8: 1 with a non-finite loss or gradient skipped (2 skipped so far, 0 in a row)",
                        "steps 9-12: 1 with a non-finite loss or gradient skipped (3 skipped so far, 1 in a row)"]
    state = _last_checkpoint(tmp_path)
    assert state["global_step"] == 16 and state["state_dict"]["ema.num_updates"] == 16 - 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()} == {16 - 3}
