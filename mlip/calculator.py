"""ASE calculator for a trained mlip model file."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.data.checks import COLLAPSE_DISTANCE, check_finite_prediction
from mlip.data.graph import structure_to_graph
from mlip.data.structure import Structure
from mlip.export import load_model
from mlip.models.cuda_graph import GraphedPotential
from mlip.models.potential import Potential


class MLIPCalculator(Calculator):
    """Energy, free energy, forces, stress and per-atom energies from an mlip model.

    Args:
        model: path of a model file written by `mlip.export.save_model`, or a `Potential`.
        device: ``"cpu"``, ``"cuda"``, ...
        dtype: ``"float64"`` or ``"float32"``.
        cuda_graphs: on CUDA, replay each call from a CUDA graph captured at a padded size
            (`mlip.models.cuda_graph.GraphedPotential`); small systems then cost one launch
            instead of thousands. Ignored on the CPU.
        min_distance: atoms closer than this (Å) raise `DataError` (`mlip.data.checks`): a
            collapsed pair has no edge direction, and its energy would be NaN. A prediction
            that is not finite raises too.
        head: the head of a multi-head model to predict with (None: the one its file selects);
            `select_head` changes it later.

    Stress is given for cells periodic in all three directions. ``free_energy`` equals
    ``energy`` (no electronic entropy in the model).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | os.PathLike | Potential,
        device: str = "cpu",
        dtype: str = "float64",
        cuda_graphs: bool = True,
        min_distance: float = COLLAPSE_DISTANCE,
        head: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.min_distance = float(min_distance)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        if isinstance(model, Potential):
            self.potential = model.to(device=self.device, dtype=self.dtype).eval()
        else:
            self.potential = load_model(model, device=self.device, dtype=self.dtype)
        self.potential.requires_grad_(False)
        if head is not None:
            self.potential.select_head(head)
        self.graphed = GraphedPotential(self.potential) if cuda_graphs and self.device.type == "cuda" else None

    def select_head(self, name: str) -> None:
        """Predict with head ``name`` of a multi-head model from now on (`Potential.select_head`)."""
        self.potential.select_head(name)
        self.reset()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions; these atoms have pbc={atoms.pbc.tolist()}"
            )
        structure = Structure(
            atomic_numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell[:],
            pbc=atoms.pbc,
            source=f"Atoms {atoms.get_chemical_formula()} passed to MLIPCalculator",
        )
        graph = structure_to_graph(structure, self.potential.r_max, min_distance=self.min_distance).to(self.device)
        periodic = bool(atoms.pbc.all())
        if self.graphed is not None:
            out = self.graphed(graph)
        else:
            out = self.potential(graph, compute_forces=True, compute_stress=periodic)
        check_finite_prediction(structure.source, out, ["energy", "forces"])
        energy = float(out["energy"].item())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["node_energy"].detach().cpu().numpy().astype(np.float64),
            "forces": out["forces"].detach().cpu().numpy().astype(np.float64),
        }
        if periodic:
            stress = out["stress"][0].detach().cpu().numpy().astype(np.float64)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
