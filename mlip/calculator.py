"""ASE calculator for a trained mlip model file."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlip.data.checks import COLLAPSE_DISTANCE, check_finite_prediction, check_overlaps
from mlip.data.graph import structure_to_graph
from mlip.data.structure import DataError, Structure
from mlip.data.verlet import VerletList
from mlip.export import load_model
from mlip.models.cuda_graph import GraphedPotential
from mlip.models.potential import Potential
from mlip.threads import set_threads


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
        neighbour_list: ``"device"`` keeps the neighbour list on the model's device, rebuilt only
            when an atom has moved more than ``skin / 2`` Å (`mlip.data.verlet.VerletList`;
            exact either way), with positions in and results out in one copy each;
            ``"host"`` builds it on the CPU at every call; ``"auto"``: device on CUDA.
        skin: of the device neighbour list, Å.
        threads: CPU threads torch uses (process-wide; `mlip.threads.set_threads`): None keeps
            ``OMP_NUM_THREADS`` or a ``torch.set_num_threads`` made before, else one thread per
            CPU no other process is busy on, so that a shared machine does not stall every call.

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
        neighbour_list: str = "auto",
        skin: float = 1.0,
        threads: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        set_threads(threads)
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
        if neighbour_list not in ("auto", "device", "host"):
            raise ValueError(f"neighbour_list must be 'auto', 'device' or 'host', got {neighbour_list!r}")
        on_gpu = self.device.type == "cuda"
        on_device = neighbour_list == "device" or (neighbour_list == "auto" and on_gpu)
        self.neighbours = VerletList(self.potential.r_max, skin) if on_device else None
        # the device path checks the elements once per set of atoms, not at every call
        self.graphed = GraphedPotential(self.potential, check_elements=not on_device) if cuda_graphs and on_gpu else None
        self._numbers: np.ndarray | None = None  # the atomic numbers the device tensors below were made for
        self._named: tuple[np.ndarray, str] | None = None  # atomic numbers and their `_source`

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
            source=self._source(atoms),
        )
        periodic = bool(atoms.pbc.all())
        if self.neighbours is not None:
            self.results = self._calculate_on_device(structure, periodic)
            return
        graph = structure_to_graph(structure, self.potential.r_max, min_distance=self.min_distance).to(self.device)
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

    def _source(self, atoms: Atoms) -> str:
        """How errors name these atoms; the formula is recomputed only when the atoms change
        (it costs milliseconds for a few thousand atoms, as much as a model call)."""
        if self._named is None or not np.array_equal(atoms.numbers, self._named[0]):
            self._named = (atoms.numbers.copy(), f"Atoms {atoms.get_chemical_formula()} passed to MLIPCalculator")
        return self._named[1]

    def _calculate_on_device(self, structure: Structure, periodic: bool) -> dict[str, float | np.ndarray]:
        """The CUDA path: positions in (and the cell when it changed) in one copy each, the
        neighbour list and the collapse check on the device, every result out in one copy."""
        s, n = structure, structure.n_atoms
        if self._numbers is None or not np.array_equal(s.atomic_numbers, self._numbers):
            numbers = torch.as_tensor(s.atomic_numbers, device=self.device)
            self.potential.species(numbers)  # unknown elements: one clear line, checked once per set of atoms
            self._numbers, self._numbers_tensor = s.atomic_numbers.copy(), numbers
            self._batch = torch.zeros(n, dtype=torch.long, device=self.device)
            self._host_cell = None
        if self._host_cell is None or not np.array_equal(s.cell, self._host_cell):
            self._host_cell, self._cell = s.cell.copy(), torch.as_tensor(s.cell, dtype=self.dtype).to(self.device)
        positions = torch.as_tensor(s.positions, dtype=self.dtype).to(self.device)
        edge_index, shifts, lengths = self.neighbours(positions, self._cell, s.positions, s.cell, s.pbc)
        graph = SimpleNamespace(atomic_numbers=self._numbers_tensor, positions=positions, cell=self._cell.view(1, 3, 3),
                                batch=self._batch, edge_index=edge_index, shifts=shifts, num_graphs=1)
        if self.graphed is not None:
            out = self.graphed(graph)
        else:
            out = self.potential(graph, compute_forces=True, compute_stress=periodic)
        closest = lengths.min().view(1) if lengths.numel() else lengths.new_full((1,), np.inf)
        parts = [out["energy"].view(1), out["node_energy"].view(n), out["forces"].reshape(3 * n), closest.to(out["energy"].dtype)]
        if periodic:
            parts.append(out["stress"][0].reshape(9))
        host = torch.cat(parts).detach().cpu().numpy().astype(np.float64)  # the one copy out
        if host[1 + 4 * n] < self.min_distance:  # name the pair (host work on this error path only)
            check_overlaps(s.source, s.positions, s.cell, edge_index.cpu().numpy(), shifts.cpu().numpy(), self.min_distance)
        if not np.isfinite(host[: 1 + 4 * n]).all():
            bad = "energy" if not np.isfinite(host[0]) else "forces"
            raise DataError(f"{s.source}: the model predicts a non-finite {bad}")
        results = {"energy": float(host[0]), "free_energy": float(host[0]), "energies": host[1 : 1 + n],
                   "forces": host[1 + n : 1 + 4 * n].reshape(n, 3)}
        if periodic:
            results["stress"] = full_3x3_to_voigt_6_stress(host[2 + 4 * n :].reshape(3, 3))
        return results
