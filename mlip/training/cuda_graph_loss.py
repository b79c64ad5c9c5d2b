"""The training loss and its parameter gradients, replayed from CUDA graphs.

A force-trained step runs the model forward, differentiates it for forces with
``create_graph=True``, and differentiates the loss again: thousands of small kernels,
so a batch of small molecules is bound by launches, not by the GPU. `GraphedLoss`
captures all of it per bucket of padded sizes (`mlip.models.cuda_graph`) and hands the
gradients to autograd through `CarryGradients`, so the optimiser, gradient clipping,
DDP's all-reduce and Lightning's loop see an ordinary ``loss.backward()``.

Padding atoms carry no force label, padding graphs no energy or stress label (and one
atom in the per-atom energy, to keep the masked mean finite), so the masked means of
the loss are those of the real batch.

With ``into`` (a `mlip.training.cuda_graph_update.GraphedUpdate`), the captured step ends by
copying its loss and gradients into the update's persistent buffers, and the optimiser
update is replayed from a graph of its own; no autograd pass is left for ``backward()``.

A batch may arrive on the host (training steps get it there: the data module leaves it
for `PotentialModule`): it is then written, labels and padding included, into a pinned
image of the bucket's buffers and copied in at once (`PaddedLabels.fill`).

Under data parallelism (``world_size`` > 1) the loss divides by the label counts of the
global batch, as the eager loss does (`mlip.training.loss`): each call sums this rank's
counts over the ranks in a buffer, once the batch is copied in (an all-reduce queued on
the device before the replay, not captured), and the captured loss reads them there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mlip.models.cuda_graph import STEPS_PER_OCTAVE, BucketedGraphs, PaddedInputs, bucket_for, bucket_of
from mlip.models.potential import Potential
from mlip.training.cuda_graph_update import GraphedUpdate
from mlip.training.loss import EnergyForcesStressLoss, label_counts


def padded_sizes_advice(totals: np.ndarray, kept: int, steps_per_octave: int = STEPS_PER_OCTAVE) -> str | None:
    """What to change when one epoch's batches span more padded sizes than ``kept`` graphs
    (each size dropped to make room is captured again when met: seconds a step); None if they fit.

    Args:
        totals: [B, 3] atoms, edges and structures of each batch of an epoch.
        kept: captured graphs kept (``module.cuda_graph_buckets``).
    """
    sizes = {bucket_of(int(a), int(e), int(g), steps_per_octave) for a, e, g in np.asarray(totals)}
    if len(sizes) <= kept:
        return None
    return (f"the {len(totals)} training batches of an epoch fall into {len(sizes)} padded sizes, more than the "
            f"{kept} CUDA graphs kept (module.cuda_graph_buckets): sizes dropped to make room are captured again, "
            f"seconds each, step after step. Batch to a steadier size (data.max_edges={int(np.mean(totals[:, 1]))}, "
            f"the mean batch's edges) or keep more graphs (module.cuda_graph_buckets={len(sizes)}) if GPU memory "
            "allows.")


class PaddedLabels(PaddedInputs):
    """`PaddedInputs` plus the labels and masks the loss reads (``label_errors``), and the
    label counts of the global batch (under data parallelism)."""

    LABELS = (("energy", 2, 0), ("natoms", 2, 0), ("has_energy", 2, 0), ("forces", 0, 0), ("forces_mask", 0, 0),
              ("stress", 2, 0), ("has_stress", 2, 0))
    PADDED = PaddedInputs.PADDED + LABELS
    UNPADDED = ("global_counts",)

    def __init__(self, num_atoms: int, num_edges: int, num_graphs: int, r_max: float, device, dtype, num_terms: int = 3):
        self.global_counts = torch.ones(num_terms, dtype=dtype, device=device)  # summed over the ranks
        self.energy = torch.empty(num_graphs, dtype=torch.float64, device=device)  # exact labels (label_errors)
        self.natoms = torch.empty(num_graphs, dtype=torch.long, device=device)
        self.has_energy = torch.empty(num_graphs, dtype=torch.bool, device=device)
        self.forces = torch.empty(num_atoms, 3, dtype=dtype, device=device)
        self.forces_mask = torch.empty(num_atoms, dtype=torch.bool, device=device)
        self.stress = torch.empty(num_graphs, 3, 3, dtype=dtype, device=device)
        self.has_stress = torch.empty(num_graphs, dtype=torch.bool, device=device)
        super().__init__(num_atoms, num_edges, num_graphs, r_max, device, dtype)

    def _paddings(self) -> dict:
        # one atom in a padding graph, so that the per-atom energy's masked mean stays finite
        return {**super()._paddings(), **{name: 0 for name, _, _ in self.LABELS}, "natoms": 1}

    def fill(self, species, positions, cell, batch, edge_index, shifts, graph=None, counts=None,
             sum_over_ranks=None) -> None:
        """As `PaddedInputs.fill`, with ``graph``'s labels. ``counts``: this rank's label counts
        (None: ones); with ``sum_over_ranks``, summed over the ranks in ``global_counts`` once
        copied in (an all-reduce queued on the device)."""
        super().fill(species, positions, cell, batch, edge_index, shifts, graph, counts)
        if sum_over_ranks is not None:
            summed = sum_over_ranks(self.global_counts)  # in place, for an all-reduce
            if summed is not self.global_counts:
                self.global_counts.copy_(summed)

    def _labelled(self, species, positions, cell, batch, edge_index, shifts, graph) -> tuple[dict, tuple]:
        values, counts = self._inputs(species, positions, cell, batch, edge_index, shifts)
        return {**values, **{name: getattr(graph, name) for name, _, _ in self.LABELS}}, counts

    def _fill_from_host(self, species, positions, cell, batch, edge_index, shifts, graph=None, counts=None) -> None:
        images = self._host_images()
        self._write(images, *self._labelled(species, positions, cell, batch, edge_index, shifts, graph))
        images["global_counts"][:] = 1 if counts is None else counts.numpy()
        self._send()

    def _fill_on_device(self, species, positions, cell, batch, edge_index, shifts, graph=None, counts=None) -> None:
        self._copy_in(*self._labelled(species, positions, cell, batch, edge_index, shifts, graph))
        if counts is not None:  # else still ones: a GraphedLoss gives counts at every call or at none
            self.global_counts.copy_(counts)


class PaddedHeadLabels(PaddedLabels):
    """`PaddedLabels` plus each graph's head and loss weight (multi-head fine-tuning with replay)."""

    LABELS = PaddedLabels.LABELS + (("head", 2, 0), ("weight", 2, 0))
    PADDED = PaddedInputs.PADDED + LABELS

    def __init__(self, num_atoms: int, num_edges: int, num_graphs: int, r_max: float, device, dtype, num_terms: int = 3):
        self.head = torch.empty(num_graphs, dtype=torch.long, device=device)
        self.weight = torch.empty(num_graphs, dtype=torch.float64, device=device)
        super().__init__(num_atoms, num_edges, num_graphs, r_max, device, dtype, num_terms)


class CarryGradients(torch.autograd.Function):
    """``loss`` as a function of ``parameters`` whose gradients were computed already."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, gradients: list[torch.Tensor], *parameters: torch.Tensor) -> torch.Tensor:
        ctx.gradients = gradients
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # one multi-tensor kernel, not one launch per parameter (~200 for a MACE)
        return (None, None, *torch._foreach_mul(ctx.gradients, grad_output))


class GraphedLoss:
    """``loss(potential(batch), batch)`` for training, with its gradients from a replayed CUDA graph.

    Args:
        potential: the model being trained, on CUDA.
        loss: the loss module.
        compute_forces, compute_stress: what the loss needs predicted.
        steps_per_octave, max_graphs, capture, check_elements: as for `mlip.models.cuda_graph.GraphedPotential`.
        world_size: the number of data-parallel ranks; above 1, calls take ``sum_over_ranks``.
        into: a graphed optimiser update: each call leaves its loss and gradients (this
            rank's) in the update's buffers, for ``into.step()``.
        shape: padded (atoms, edges, graphs) of every batch that fits it
            (`mlip.models.cuda_graph.static_shape` of the packing budget): one captured step.

    Calling it on a batch returns ``(loss, terms)`` like ``loss(potential(batch, create_graph=True), batch)``
    (with ``sum_over_ranks``: like ``loss(..., sum_over_ranks, world_size)``). Without ``into``,
    ``loss.backward()`` (before the next call) puts the gradients on the parameters; with it,
    the loss is a plain tensor and the gradients are in ``into``'s buffers. Let the loss go
    before the next call (as the training loop does): an autograd graph of the parameters
    still alive from a backward on the default stream breaks the capture of a new size.
    """

    def __init__(
        self,
        potential: Potential,
        loss: EnergyForcesStressLoss,
        compute_forces: bool = True,
        compute_stress: bool = False,
        steps_per_octave: int = STEPS_PER_OCTAVE,
        max_graphs: int = 4,
        capture: bool = True,
        check_elements: bool = True,
        world_size: int = 1,
        into: GraphedUpdate | None = None,
        shape: tuple[int, int, int] | None = None,
    ):
        self.potential, self.loss = potential, loss
        self.shape = None if shape is None else tuple(int(v) for v in shape)
        self.check_elements, self.world_size = check_elements, world_size
        self.wants = {"compute_forces": compute_forces, "compute_stress": compute_stress}
        self.steps_per_octave = steps_per_octave
        self.parameters = [p for p in potential.parameters() if p.requires_grad]
        self._outputs = None if into is None else (into.loss, [into.gradient_of(p) for p in self.parameters])
        device, dtype = potential.e0s.device, potential.dtype
        self.dtype = dtype
        predicted = ["energy"] + [name for name in ("forces", "stress") if self.wants[f"compute_{name}"]]
        self.terms = loss.term_names(predicted)
        # a multi-head model trains each structure on its own head, weighted (`mlip.finetune`)
        self.multi_head = bool(potential.heads)
        buffers = PaddedHeadLabels if self.multi_head else PaddedLabels
        self.graphs = BucketedGraphs(
            lambda key: buffers(*key, potential.r_max, device, dtype, len(self.terms)), self._loss_and_gradients,
            device, max_graphs, capture, module=potential,
        )

    def _loss_and_gradients(self, labels: PaddedLabels) -> dict[str, torch.Tensor]:
        heads = labels.head if self.multi_head else None
        pred = self.potential.predict(*labels.arguments(), create_graph=True, heads=heads, **self.wants)
        if self.world_size > 1:  # the global batch's counts, filled in before each replay
            loss, terms = self.loss(pred, labels, lambda local: labels.global_counts, self.world_size)
        else:
            loss, terms = self.loss(pred, labels)
        gradients = torch.autograd.grad(loss, self.parameters, allow_unused=True)
        out = {"loss": loss.detach(), **{f"term_{k}": v.detach() for k, v in terms.items()}}
        gradients = [torch.zeros_like(p) if g is None else g for p, g in zip(self.parameters, gradients)]
        if self._outputs is not None:  # into the update's buffers, as part of the captured step
            loss_buffer, gradient_buffers = self._outputs
            loss_buffer.copy_(out["loss"])
            torch._foreach_copy_(gradient_buffers, gradients)
            return out
        out.update((f"grad_{k}", g) for k, g in enumerate(gradients))
        return out

    def __call__(
        self, batch: Any, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        *tensors, num_graphs = self.potential.inputs(batch, self.check_elements)
        if self.multi_head and getattr(batch, "head", None) is None:
            raise ValueError("a multi-head model trains on batches whose structures name their head (graph.head)")
        key = bucket_for(tensors[0].shape[0], tensors[4].shape[1], num_graphs, self.steps_per_octave, self.shape)
        counts = None
        if self.world_size > 1:
            if sum_over_ranks is None:
                raise ValueError(f"world_size={self.world_size}: give sum_over_ranks (an all-reduce sum)")
            counts = label_counts(batch, self.terms).to(self.dtype)  # this rank's: summed in the buffer
        out = self.graphs(key, *tensors, batch, counts, sum_over_ranks if self.world_size > 1 else None)
        terms = {k[5:]: v.clone() for k, v in out.items() if k.startswith("term_")}
        if self._outputs is not None:  # the gradients are in the update's buffers
            return out["loss"].clone(), terms
        # the static gradient buffers themselves: backward() multiplies them into new tensors,
        # so call it before the next call overwrites them
        gradients = [out[f"grad_{k}"] for k in range(len(self.parameters))]
        return CarryGradients.apply(out["loss"], gradients, *self.parameters), terms
