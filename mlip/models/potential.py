"""The wrapper every model goes through: energies, forces and stress by autograd.

    E = Σ_i (scale · ε_i + shift + E0[z_i]),   F = -∂E/∂r,   σ = (1/V) ∂E/∂ε

where ε_i are the model's per-node outputs and ε is a symmetric strain applied to
positions and cell (stress in ASE's sign convention).

The energy is summed in two parts, the interaction energy Σ_i (scale · ε_i + shift) in the
model's dtype and Σ_i E0[z_i] in float64, and rounded once. Beside the totals (3BPA: -17,660
eV, against -130 eV of interaction energy) a float32 sum of E0 and ε per atom rounds by about
2 meV per molecule, a noise that changes with the geometry; the loss instead compares the
interaction energy with the label less Σ E0, both exact (``interaction_energy``,
``e0_energy``; `mlip.training.errors.label_errors`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlip.data.checks import unknown_elements
from mlip.nn.pair_repulsion import build_pair_repulsion
from mlip.nn.scatter import scatter_sum


class UnknownElementError(ValueError):
    """A structure holds an element the model was not trained on."""


class Potential(nn.Module):
    """Wraps an energy model with species mapping, statistics and derivatives.

    Args:
        model: maps (species [n], edge_index [2, E], edge_vectors [E, 3]) -> node energies [n].
        elements: atomic numbers the model knows; species index = position in this list.
        e0s: per-element reference energies (eV), aligned with ``elements``.
        scale: energy scale (eV) multiplying the model output.
        shift: per-atom energy shift (eV).
        model_spec: ``{"target": ..., "kwargs": ...}`` that rebuilds ``model`` (for export), and
            ``"pair_repulsion"``: ``{"kind": "zbl", "p": 6, "scaled": false}`` or absent.

    A model with several heads (``model_spec["heads"]``: their names; the model's ``num_heads``)
    keeps each head's E0s, scale and shift (``head_e0s`` [H, Z], ``head_scale``, ``head_shift``
    [H]); `select_head` makes one of them the one predicted, in place (a captured CUDA graph
    stays valid).

    A pair repulsion (`mlip.nn.pair_repulsion`, any model family) adds its energy per node in
    eV beside ``scale · ε_i + shift``; ``scaled`` puts it inside, ``scale · (ε_i + V_i) +
    shift``, where mace-torch's ``ScaleShiftMACE`` has it (its converted files say so).
    """

    def __init__(
        self,
        model: nn.Module,
        elements: Sequence[int],
        e0s: Sequence[float],
        scale: float = 1.0,
        shift: float = 0.0,
        model_spec: dict[str, Any] | None = None,
    ):
        super().__init__()
        assert len(elements) == len(e0s), f"{len(elements)} elements but {len(e0s)} E0s"
        self.model = model
        self.model_spec = model_spec
        pair_spec = (model_spec or {}).get("pair_repulsion")
        self.pair_repulsion = build_pair_repulsion(pair_spec, elements)
        if self.pair_repulsion is not None and getattr(model, "direct_forces", False):
            raise ValueError("pair_repulsion adds an energy whose forces a model with direct forces does not predict: "
                             "use direct_forces=false (forces by autograd) with a pair repulsion")
        self.pair_repulsion_scaled = bool(pair_spec.get("scaled", False)) if pair_spec else False
        dtype = torch.get_default_dtype()
        self.register_buffer("elements", torch.tensor(list(elements), dtype=torch.long))
        table = torch.full((119,), -1, dtype=torch.long)
        table[self.elements] = torch.arange(len(elements))
        self.register_buffer("species_of_z", table)
        # E0s stay float64 whatever the model's dtype (`_apply`): a float32 file would round them
        # (1e-4 eV at -1000 eV), a shift of every energy that no later cast undoes
        self.register_buffer("e0s", torch.tensor(list(e0s), dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=dtype))
        self.register_buffer("shift", torch.tensor(float(shift), dtype=dtype))
        self.heads: list[str] = list((model_spec or {}).get("heads") or [])
        if self.heads:  # filled by the converter or a model file; each head starts as the one given
            count = len(self.heads)
            self.register_buffer("head_e0s", self.e0s.repeat(count, 1))
            self.register_buffer("head_scale", self.scale.repeat(count))
            self.register_buffer("head_shift", self.shift.repeat(count))

    EXACT_BUFFERS = ("e0s", "head_e0s")

    def _apply(self, fn, recurse: bool = True):
        """`nn.Module.to` and friends, with the E0 buffers moved but kept in float64."""
        exact = {name: self._buffers[name] for name in self.EXACT_BUFFERS if name in self._buffers}
        super()._apply(fn, recurse)
        for name, value in exact.items():
            self._buffers[name] = value.to(device=self._buffers[name].device, dtype=torch.float64)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating-point dtype (its weights and predictions; E0s are float64)."""
        return self.scale.dtype

    @property
    def head(self) -> str | None:
        """The name of the head predicted now (None for a single-head model)."""
        return self.heads[int(self.model.head)] if self.heads else None

    def select_head(self, name: str) -> None:
        """Predict with head ``name`` from now on (its readout, E0s, scale and shift)."""
        if not self.heads:
            raise ValueError(f"head={name!r}: this model has a single head")
        if name not in self.heads:
            raise ValueError(f"no head {name!r}; the model has {self.heads}")
        index = self.heads.index(name)
        with torch.no_grad():
            self.model.head.fill_(index)
            self.e0s.copy_(self.head_e0s[index])
            self.scale.copy_(self.head_scale[index])
            self.shift.copy_(self.head_shift[index])

    @property
    def r_max(self) -> float:
        return float(self.model.r_max)

    def training_statistics(self) -> dict[str, Any]:
        """What this potential took from its training set: elements, E0s (eV), scale (eV),
        shift (eV/atom) and, when the spec names it, avg_num_neighbors."""
        kwargs = (self.model_spec or {}).get("kwargs", {})
        return {
            "elements": self.elements.tolist(), "e0s": self.e0s.tolist(),
            "scale": float(self.scale), "shift": float(self.shift),
            "avg_num_neighbors": kwargs.get("avg_num_neighbors"),
        }

    def species(self, atomic_numbers: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Species indices [n] of atomic numbers [n]; raises `UnknownElementError` for others
        (``check=False``: no check, no host sync; unknown elements get index -1)."""
        table = self.species_of_z
        if atomic_numbers.device != table.device:  # a batch left on the host (`GraphedLoss` copies it in)
            table = self._species_table_on(atomic_numbers.device)
        species = table[atomic_numbers.clamp(0, 118)]
        if check and bool((species < 0).any()):
            raise UnknownElementError(unknown_elements(atomic_numbers.cpu(), self.elements.tolist()))
        return species

    def _warn_beyond_slots(self, receiver: torch.Tensor, num_nodes: int, slots: int) -> None:
        """Warn (once per model) when an atom has more neighbours than the model's token slots:
        it keeps its nearest ``slots`` (`mlip.nn.neighbour_slots`), a different function from one that sees all."""
        most = int(torch.bincount(receiver, minlength=num_nodes).max())
        if most > slots and not getattr(self, "_warned_slots", False):
            self._warned_slots = True
            warnings.warn(f"an atom has {most} neighbours within {self.r_max:g} Å but the model reads its nearest "
                          f"{slots} (max_neighbors): the farthest are left out, and the energy is not smooth where "
                          f"they swap rank; train with max_neighbors >= {most} for such structures", stacklevel=3)

    def _species_table_on(self, device: torch.device) -> torch.Tensor:
        """A copy of ``species_of_z`` on another device, made once (one host sync) per placement of the model."""
        key = (self.species_of_z.data_ptr(), device)
        if getattr(self, "_species_table_copy", (None,))[0] != key:
            self._species_table_copy = (key, self.species_of_z.to(device))
        return self._species_table_copy[1]

    def forward(
        self,
        graph: Any,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predict for a (batched) `AtomicGraph`.

        A multi-head model predicts each structure with the head its ``head`` [G] names, if the
        graph has one (else the selected head).

        Returns ``energy`` [G] eV, ``node_energy`` [n] eV, its two parts ``interaction_energy`` [G]
        eV (model dtype) and ``e0_energy`` [G] eV (float64, no gradient), and when asked ``forces``
        [n, 3] eV/Å and ``stress`` [G, 3, 3] eV/Å³ (zero for graphs without a cell volume).
        ``create_graph=True`` keeps the graph of the derivatives for training on them.
        """
        heads = getattr(graph, "head", None) if self.heads else None
        return self.predict(*self.inputs(graph), compute_forces, compute_stress, create_graph, heads)

    def inputs(self, graph: Any, check_elements: bool = True) -> tuple:
        """`predict`'s tensor arguments for a (batched) graph: (species, positions, cell [G, 3, 3],
        batch, edge_index, shifts, num_graphs); checks the elements (one host sync), unless the
        caller has (``check_elements=False``: the training loop checks each batch on the CPU)."""
        num_graphs = int(graph.num_graphs) if hasattr(graph, "num_graphs") else 1
        batch = graph.batch if getattr(graph, "batch", None) is not None else torch.zeros_like(graph.atomic_numbers)
        species = self.species(graph.atomic_numbers, check_elements)
        slots = getattr(self.model, "max_neighbors", None)
        if check_elements and slots is not None and graph.edge_index.shape[1]:
            self._warn_beyond_slots(graph.edge_index[1], species.shape[0], slots)
        return species, graph.positions, graph.cell.view(-1, 3, 3), batch, graph.edge_index, graph.shifts, num_graphs

    @property
    def conservative(self) -> bool:
        """Whether forces (and stress) are derivatives of the energy; False for a model that
        predicts its forces directly (``direct_forces``), which no energy conserves in MD."""
        return not getattr(self.model, "direct_forces", False)

    def node_terms(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                   node_heads: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-node interaction energies ``scale · ε_i + shift`` (+ pair repulsion) [n] eV, in the
        model's dtype, and E0s [n] eV, from species [n], edge_index [2, E] and edge vectors
        r_ij [E, 3] Å; ``node_heads`` [n]: each node's head of a multi-head model; third, the forces
        [n, 3] eV/Å of a model that predicts them directly (else None)."""
        scale, shift, node_e0 = self.scale, self.shift, self.e0s.index_select(0, species)
        if node_heads is not None:  # each node's own head: its readout, E0s, scale and shift
            node_model = self.model(species, edge_index, edge_vectors, node_heads)
            scale, shift = self.head_scale.index_select(0, node_heads), self.head_shift.index_select(0, node_heads)
            node_e0 = self.head_e0s[node_heads, species]
        else:
            node_model = self.model(species, edge_index, edge_vectors)
        direct_forces = None
        if isinstance(node_model, tuple):  # (ε, F): a model with direct forces
            node_model, forces = node_model
            direct_forces = (scale[:, None] if scale.dim() else scale) * forces
        pair = None
        if self.pair_repulsion is not None:
            pair = self.pair_repulsion(species, edge_index, torch.linalg.vector_norm(edge_vectors, dim=-1))
            if self.pair_repulsion_scaled:
                node_model, pair = node_model + pair, None
        node_interaction = scale * node_model + shift
        if pair is not None:
            node_interaction = node_interaction + pair
        return node_interaction, node_e0, direct_forces

    def node_energies(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-node energies [n] eV (E0 included) of a graph given by its edge vectors r_ij [E, 3] Å
        (sender j, receiver i: r_ij = x_j - x_i): the form LAMMPS hands its pairs in."""
        node_interaction, node_e0, _ = self.node_terms(species, edge_index, edge_vectors)
        return node_interaction + node_e0.to(node_interaction.dtype)

    def predict(
        self,
        species: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        batch: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        num_graphs: int,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
        heads: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`forward` on plain tensors, with no host synchronisation (CUDA-graph capturable).

        species [n] (indices from `species`), positions [n, 3] Å, cell [G, 3, 3] Å, batch [n],
        edge_index [2, E] (sender, receiver), shifts [E, 3] (integer cell translations);
        ``heads`` [G]: each graph's head of a multi-head model (None: the selected head).
        """
        dtype = self.dtype
        positions = positions.to(dtype)
        cell = cell.to(dtype)
        unstrained_cell = cell
        inputs = []
        direct = not self.conservative
        if compute_forces and not direct:
            positions = positions.detach().requires_grad_(True)
            inputs.append(positions)
        if compute_stress:
            strain = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=positions.device, requires_grad=True)
            inputs.append(strain)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("ni,nij->nj", positions, symmetric.index_select(0, batch))
            cell = cell + torch.bmm(cell, symmetric)

        # index_select, not positions[sender]: the backward of advanced indexing sorts the
        # indices (deterministic index_put), ten times slower on the GPU than index_add
        sender, receiver = edge_index
        edge_cells = cell.index_select(0, batch.index_select(0, receiver))
        edge_vectors = (
            positions.index_select(0, sender)
            - positions.index_select(0, receiver)
            + torch.einsum("ei,eij->ej", shifts.to(dtype), edge_cells)
        )
        node_heads = heads.index_select(0, batch) if heads is not None and self.heads else None
        node_interaction, node_e0, direct_forces = self.node_terms(species, edge_index, edge_vectors, node_heads)
        interaction = scatter_sum(node_interaction, batch, num_graphs)
        # Σ E0 apart and in float64: exact, and rounded once with the interaction energy (module docstring)
        e0_energy = scatter_sum(node_e0.to(torch.float64), batch, num_graphs)
        energy = (e0_energy + interaction).to(dtype)
        node_energy = node_interaction + node_e0.to(dtype)
        out = {"energy": energy, "node_energy": node_energy, "interaction_energy": interaction, "e0_energy": e0_energy}
        if compute_forces and direct:  # the model's own forces (non-conservative)
            out["forces"] = direct_forces
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
            if compute_forces and not direct:
                out["forces"] = -grads[0]
            if compute_stress:
                a, b, c = unstrained_cell.unbind(1)
                volume = (a * torch.linalg.cross(b, c)).sum(-1).abs()  # a triple product: no solver, no sync
                has_volume = volume > 1e-6
                out["stress"] = torch.where(
                    has_volume[:, None, None], grads[-1] / torch.where(has_volume, volume, 1.0)[:, None, None], 0.0
                )
        return out
