"""mlip models in torch-sim: batched MD, relaxation and static evaluation on one device.

    import torch_sim as ts
    from mlip.integrations.torchsim import MLIPModel

    model = MLIPModel("model.safetensors", device="cuda", dtype="float64")
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    final = ts.integrate(state, model, integrator=ts.nvt_langevin, n_steps=1000, temperature=300, timestep=0.002)

`MLIPModel` implements torch-sim's ``ModelInterface``: a batch of systems (``SimState``) in,
``energy`` [n_systems] eV, ``forces`` [n_atoms, 3] eV/Å and ``stress`` [n_systems, 3, 3] eV/Å³
(ASE's sign, as torch-sim's other models) out. Neighbour lists stay on the state's device
(`mlip.data.verlet.BatchedVerletList`: vesin-torch at r_max + ``skin``, a system's list rebuilt
only when one of its atoms has moved more than half the skin or its cell changed). On CUDA the
model call replays from CUDA graphs (`mlip.models.cuda_graph.GraphedPotential`), padded to
buckets of sizes, so a batch whose size does not change costs one launch. Needs the ``torchsim``
extra (``pip install mlip-forge[torchsim]``: torch-sim-atomistic).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface

from mlip.data.verlet import BatchedVerletList
from mlip.export import load_potential
from mlip.models.cuda_graph import GraphedPotential
from mlip.models.potential import Potential


class MLIPModel(ModelInterface):
    """A mlip `Potential` (or a model file) as a torch-sim model.

    Args:
        model: a `Potential`, or the path of a model file or training checkpoint.
        device: where it runs (default: CUDA when available), as torch takes it.
        dtype: of the weights and the computation (``torch.float64`` or ``torch.float32``).
        compute_forces, compute_stress: what ``forward`` returns besides the energy.
        head: of a multi-head model, the head predicted (default: the file's selected one).
        cuda_graphs: on CUDA, replay each call from a captured graph.
        skin: of the neighbour lists kept between calls, Å (exact for any skin; 0 rebuilds
            every call).
    """

    def __init__(
        self,
        model: str | os.PathLike | Potential,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        compute_forces: bool = True,
        compute_stress: bool = True,
        head: str | None = None,
        cuda_graphs: bool = True,
        skin: float = 1.0,
    ) -> None:
        super().__init__()
        self._device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = dtype
        self._compute_forces = compute_forces
        self._compute_stress = compute_stress
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: edges grow with density
        if isinstance(model, Potential):
            potential = model
        else:
            potential = load_potential(model, dtype=str(dtype).removeprefix("torch."))
        self.potential = potential.to(device=self._device, dtype=dtype).eval().requires_grad_(False)
        if head is not None:
            self.potential.select_head(head)
        self.neighbours = BatchedVerletList(self.potential.r_max, skin)
        self.graphed = (GraphedPotential(self.potential, compute_stress=compute_stress)
                        if cuda_graphs and self._device.type == "cuda" else None)

    def _graph(self, state: ts.SimState) -> SimpleNamespace:
        """The batched graph of ``state``: edges of every system at the model's cutoff."""
        positions, cell = state.positions.to(self._dtype), state.row_vector_cell.to(self._dtype)
        edge_index, shifts = self.neighbours(positions, cell, state.system_idx, state.pbc)
        return SimpleNamespace(
            atomic_numbers=state.atomic_numbers, positions=positions, cell=cell, batch=state.system_idx,
            edge_index=edge_index, shifts=shifts, num_graphs=cell.shape[0])

    def forward(self, state: ts.SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """Energies [n_systems] eV, forces [n_atoms, 3] eV/Å and stress [n_systems, 3, 3] eV/Å³."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        graph = self._graph(state)
        periodic = bool(torch.as_tensor(state.pbc).all())
        want_stress = self._compute_stress and periodic
        if self.graphed is not None and want_stress == self._compute_stress:
            out = self.graphed(graph)
        else:
            with torch.enable_grad():
                out = self.potential(graph, compute_forces=self._compute_forces, compute_stress=want_stress)
        results = {"energy": out["energy"].detach()}
        if self._compute_forces:
            results["forces"] = out["forces"].detach()
        if self._compute_stress:
            results["stress"] = out["stress"].detach() if want_stress else torch.zeros(
                graph.num_graphs, 3, 3, dtype=self._dtype, device=self._device)
        return results
