"""The optimiser update of a graphed training step, replayed from one CUDA graph.

Once `GraphedLoss` has replayed a step's loss and gradients, what is left of the step is a
few dozen small kernels launched one by one from Python: the gradient norm, the finite
check, clipping by norm, the fused Adam update, the weight average and the skip counters.
From Lightning's optimiser hooks they cost the host about as long as the GPU takes for the
whole step (3BPA, batch 10, H200: docs/performance.md). `GraphedUpdate` runs them once
eagerly (a real update: it also creates the optimiser's state), captures them as one CUDA
graph, and replays that graph at every later step.

A replay reads and writes the tensors at the addresses they had at the capture, so these
stay put between steps:

- the gradients: views of one persistent flat buffer, one per trainable parameter
  (``gradient_of``). The loss graph copies its gradients there (`GraphedLoss` with
  ``into``); they are set as ``p.grad`` for the capture, and nothing sets them to None (the
  module's ``optimizer_zero_grad`` does nothing while the update is graphed);
- the loss (``loss``), which the finite check reads;
- the learning rate of each parameter group: a float32 device scalar (the fused kernels read
  a tensor learning rate as float32). The group's ``lr`` stays a float, as schedulers,
  warm-up, Lightning and checkpoints see it; the scalar is filled from it before a replay
  whenever it changed. During the eager update and the capture only, the group holds the
  scalar and ``capturable=True`` (what torch's Adam needs to be captured);
- the optimiser's state, created by the eager update.

Under data parallelism (``world_size`` > 1) ``step`` first sums the flat buffer and the loss
over the ranks (two all-reduces queued before the replay, outside the graph); the graph
divides the gradients by the world size, as DDP's average does. Every rank then sees the same gradients and summed loss, so every rank skips
the same steps.

A new optimiser, or state or weights at other addresses (a move, a state loaded by
replacing tensors), is seen at the next step and the update is run eagerly and captured
again. On the CPU, or with ``capture=False``, every step runs the update eagerly: the same
code, so the CPU tests check what the GPU replays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from mlip.models.cuda_graph import shared_pool
from mlip.training.gradients import clip_by_norm_, global_norm


class GraphedUpdate:
    """Gradient norm, finite check, clipping, ``optimizer.step()`` and ``after`` hooks, captured once.

    Args:
        optimizer: a fused torch Adam or AdamW (``fused=True``) over the model's parameters.
        max_norm: clip the gradients to this global 2-norm (as `torch.nn.utils.clip_grad_norm_`);
            None or 0: no clipping.
        after: functions of ``skipped`` (a float32 device scalar, 1.0 where this step's loss or
            gradient norm is not finite, else 0.0) run after the optimiser step (the weight
            average, counters); they must only queue device work.
        capture: ``False`` runs every update eagerly.
        world_size: the number of data-parallel ranks.
        sum_over_ranks: with ``world_size`` > 1, an in-place all-reduce sum (it must not wait
            for the GPU: `torch.distributed.all_reduce`).

    A step whose loss or gradient norm is NaN/inf changes no weight and no optimiser state
    (the fused step's ``found_inf``); what the ``after`` functions do with ``skipped`` is theirs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_norm: float | None = None,
        after: Sequence[Callable[[torch.Tensor], None]] = (),
        capture: bool = True,
        world_size: int = 1,
        sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if world_size > 1 and sum_over_ranks is None:
            raise ValueError(f"world_size={world_size}: give sum_over_ranks (an in-place all-reduce sum)")
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("GraphedUpdate needs a fused optimiser (fused=True): it skips steps through found_inf")
        self.optimizer, self.max_norm, self.after = optimizer, float(max_norm or 0.0), list(after)
        self.parameters = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if len({p.dtype for p in self.parameters}) > 1:
            raise ValueError("GraphedUpdate keeps the gradients in one flat buffer: the parameters must share a dtype")
        device = self.parameters[0].device
        self.capture = capture and device.type == "cuda"
        self.world_size, self.sum_over_ranks = world_size, sum_over_ranks
        # one flat buffer (one all-reduce under DDP); each parameter's gradient is a view of it
        self.flat = torch.zeros(sum(p.numel() for p in self.parameters), dtype=self.parameters[0].dtype, device=device)
        self.gradients = [g.view_as(p) for g, p in zip(self.flat.split([p.numel() for p in self.parameters]),
                                                         self.parameters)]
        self._gradient_of = {id(p): g for p, g in zip(self.parameters, self.gradients)}
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # any loss dtype converts exactly
        self.norm = torch.zeros((), dtype=self.parameters[0].dtype, device=device)  # this step's, before clipping
        self.skipped = torch.zeros((), dtype=torch.float32, device=device)
        self._rates = [float(group["lr"]) for group in optimizer.param_groups]
        self.learning_rates = [torch.tensor(rate, dtype=torch.float32, device=device) for rate in self._rates]
        self._graph: torch.cuda.CUDAGraph | None = None
        self._where: tuple | None = None  # of the optimiser, weights and state at the capture
        self.captures = 0

    def gradient_of(self, parameter: torch.Tensor) -> torch.Tensor:
        """The persistent gradient buffer of a trainable parameter (its ``grad`` from the capture on)."""
        return self._gradient_of[id(parameter)]

    def step(self) -> None:
        """Update from the gradients and loss now in the buffers: replayed, or run and captured."""
        self._sync_learning_rates()
        if self.world_size > 1:  # queued on the device before the replay; the graph reads the sums
            self.sum_over_ranks(self.flat)
            self.sum_over_ranks(self.loss)
        if self._graph is not None and self._addresses() == self._where:
            self._graph.replay()
            return
        self._graph = None
        for p, g in zip(self.parameters, self.gradients):
            p.grad = g
        self._update()  # this step's update, eagerly; it creates the optimiser's state if it has none
        if not self.capture:
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=shared_pool(self.flat.device)):  # captured, not run: the eager update above was this step's
            self._update()
        self._graph, self._where = graph, self._addresses()
        self.captures += 1

    def _update(self) -> None:
        gradients = self.gradients
        if self.world_size > 1:  # the mean over the ranks, as DDP's
            self.flat.div_(self.world_size)
        norm = global_norm(gradients)
        self.norm.copy_(norm)
        self.skipped.copy_(1.0 - (torch.isfinite(norm) & torch.isfinite(self.loss)).to(torch.float32))
        if self.max_norm:
            clip_by_norm_(gradients, norm, self.max_norm)
        with self._capturable():
            self.optimizer.step()
        for function in self.after:
            function(self.skipped)

    @contextmanager
    def _capturable(self) -> Iterator[None]:
        """The groups with the device learning rates and ``capturable``; ``found_inf`` = skipped."""
        groups = self.optimizer.param_groups
        saved = [(group["lr"], group.get("capturable", False)) for group in groups]
        found_inf = getattr(self.optimizer, "found_inf", None)
        for group, rate in zip(groups, self.learning_rates):
            group["lr"], group["capturable"] = rate, True
        self.optimizer.found_inf = self.skipped
        try:
            yield
        finally:
            for group, (rate, capturable) in zip(groups, saved):
                group["lr"], group["capturable"] = rate, capturable
            self.optimizer.found_inf = found_inf

    def _sync_learning_rates(self) -> None:
        for k, group in enumerate(self.optimizer.param_groups):
            rate = float(group["lr"])
            if rate != self._rates[k]:
                self.learning_rates[k].fill_(rate)
                self._rates[k] = rate

    def _addresses(self) -> tuple:
        """The optimiser, and where the first weight and its state live."""
        first = self.parameters[0]
        state = self.optimizer.state.get(first, {})
        return (id(self.optimizer), first.data_ptr(),
                *(state[key].data_ptr() for key in ("exp_avg", "step") if torch.is_tensor(state.get(key))))
