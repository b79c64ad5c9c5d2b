"""FIRE on many structures at once, in one batched graph (positions only).

Each structure follows exactly the update of `ase.optimize.FIRE` (Bitzek et al. 2006,
as ASE implements it: dt, a and the step counter are per structure, and the step is
capped at ``maxstep`` per structure), but all structures in flight share one model call
per step. A structure leaves the batch when its largest force is below ``fmax`` (or it
has run ``steps`` steps, or its energy or forces became non-finite), and the next one
waiting takes its place, so thousands of small cells run at GPU speed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip.data.checks import COLLAPSE_DISTANCE
from mlip.data.graph import add_batch_edges, structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.potential import Potential
from mlip.nn.scatter import scatter_sum
from mlip.simulation.relax import CONVERGED, FAILED, NOT_CONVERGED, RelaxResult, cell_volume, with_results


@dataclass(frozen=True)
class FIREParameters:
    """`ase.optimize.FIRE`'s defaults (dt and maxstep in ASE's units: Å, sqrt(amu)·Å/sqrt(eV))."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


class _Slot:
    """One structure in flight: its graph template and its FIRE state between batch rebuilds."""

    def __init__(self, index: int, source: str, atoms: Atoms, r_max: float, device, dtype, params: FIREParameters):
        self.index, self.source, self.atoms = index, source, atoms
        structure = structure_from_atoms(atoms, source, None, None, None, None)
        self.graph = structure_to_graph(structure, None)
        self.positions = torch.as_tensor(atoms.positions, device=device, dtype=dtype)
        self.velocity = torch.zeros_like(self.positions)
        self.state = torch.tensor([params.dt, params.astart, 0.0, 0.0], device=device, dtype=dtype)  # dt, a, n, started
        self.steps = 0
        self.energies: list[float] = []
        self.message = ""  # why it failed, when it did


class BatchedFIRE:
    """Relax structures with FIRE, ``max_structures`` (and at most ``max_atoms`` atoms) at a time.

    Args:
        potential: the model, on its device and in its dtype.
        fmax: convergence threshold on the largest atomic force (eV/Å).
        steps: the most FIRE steps per structure.
        max_structures / max_atoms: the batch in flight.
        params: FIRE's parameters (ASE's defaults).
        skin: Verlet skin of the neighbour lists (Å); 0 rebuilds them every step.
        min_distance: a structure with two atoms closer than this (Å) stops as failed, as
            `MLIPCalculator` refuses it (`mlip.data.checks.COLLAPSE_DISTANCE`).
    """

    def __init__(self, potential: Potential, fmax: float = 0.05, steps: int = 500, max_structures: int = 64,
                 max_atoms: int = 4096, params: FIREParameters = FIREParameters(), skin: float = 0.0,
                 min_distance: float = COLLAPSE_DISTANCE):
        self.potential = potential
        self.min_distance = min_distance
        self.fmax, self.steps = fmax, steps
        self.max_structures, self.max_atoms = max_structures, max_atoms
        self.params = params
        self.skin = skin
        self.rebuilds = 0  # neighbour-list builds of the last run
        self.device = potential.species_of_z.device
        self.dtype = next(potential.parameters()).dtype

    def run(self, items: Iterable[tuple[int, str, Atoms]], progress=None) -> list[RelaxResult]:
        """Relax every (index, source, atoms); results in the order given. Fixed atoms
        (`FixAtoms`) do not move. ``progress`` (a tqdm bar) is advanced once per finished structure."""
        waiting = deque(items)
        results: dict[int, RelaxResult] = {}
        order = [index for index, _, _ in waiting]
        active: list[_Slot] = []
        batch = None
        self.rebuilds = 0
        while waiting or active:
            if batch is None:  # membership changed: refill and rebuild
                atoms_in_flight = sum(len(slot.atoms) for slot in active)
                while waiting and len(active) < self.max_structures and (
                    not active or atoms_in_flight + len(waiting[0][2]) <= self.max_atoms
                ):
                    slot = _Slot(*waiting.popleft(), self.potential.r_max, self.device, self.dtype, self.params)
                    atoms_in_flight += len(slot.atoms)
                    active.append(slot)
                batch = Batch.from_data_list([slot.graph for slot in active]).to(self.device)
                batch.cell = batch.cell.to(self.dtype)
                positions = torch.cat([slot.positions for slot in active])
                velocity = torch.cat([slot.velocity for slot in active])
                state = torch.stack([slot.state for slot in active])
                free = ~batch.fixed.to(self.device)
                built_at = None
            batch.positions = positions
            if built_at is None or float((positions - built_at).norm(dim=1).max()) > self.skin / 2:
                add_batch_edges(batch, self.potential.r_max + self.skin)
                built_at = positions
                self.rebuilds += 1
            out = self.potential(batch, compute_forces=True)
            energy = out["energy"].detach()
            raw_forces = out["forces"].detach()
            forces = raw_forces * free[:, None]  # FixAtoms: fixed atoms feel no force
            finite = torch.isfinite(energy) & (scatter_sum((~torch.isfinite(forces)).any(1).to(energy.dtype),
                                                           batch.batch, dim_size=len(active)) == 0)
            fmax = torch.zeros_like(energy).scatter_reduce(0, batch.batch, forces.norm(dim=1), "amax")
            closest = self._closest_pairs(positions, batch, len(active))
            # one host read per step: who is done
            energy_host, fmax_host, finite_host = energy.tolist(), fmax.tolist(), finite.tolist()
            closest_host = closest.tolist()
            done = []
            for k, slot in enumerate(active):
                if closest_host[k] < self.min_distance:  # as MLIPCalculator refuses the step (mlip.data.checks)
                    status = FAILED
                    slot.message = (f"two atoms are {closest_host[k]:.3f} Å apart (< {self.min_distance} Å) at step "
                                    f"{slot.steps}: the structure collapsed")
                else:
                    slot.energies.append(energy_host[k])
                    if not finite_host[k]:
                        status = FAILED
                    elif fmax_host[k] < self.fmax:
                        status = CONVERGED
                    elif slot.steps >= self.steps:
                        status = NOT_CONVERGED
                    else:
                        continue
                done.append(k)
                results[slot.index] = self._result(slot, status, positions, raw_forces, batch, k, fmax_host[k])
                if progress is not None:
                    progress.update(1)
            positions, velocity, state = self._step(positions, velocity, state, forces, batch.batch, len(active))
            for slot in active:
                slot.steps += 1
            if done:  # hand the state back to the slots that go on, and rebuild
                counts = batch.natoms.tolist()
                for slot, p, v, s in zip(active, positions.split(counts), velocity.split(counts), state):
                    slot.positions, slot.velocity, slot.state = p, v, s
                active = [slot for k, slot in enumerate(active) if k not in set(done)]
                batch = None
        return [results[index] for index in order]

    @staticmethod
    def _closest_pairs(positions: torch.Tensor, batch, num_graphs: int) -> torch.Tensor:
        """The shortest edge of each structure (Å; inf without edges)."""
        sender, receiver = batch.edge_index
        graph = batch.batch[receiver]
        shifts = torch.einsum("ei,eij->ej", batch.shifts.to(positions.dtype), batch.cell.view(-1, 3, 3)[graph])
        lengths = (positions[sender] - positions[receiver] + shifts).norm(dim=1)
        closest = torch.full((num_graphs,), float("inf"), dtype=positions.dtype, device=positions.device)
        return closest.scatter_reduce(0, graph, lengths, "amin")

    def _step(self, x, v, state, f, batch, num_graphs):
        """One FIRE step of every structure (ase.optimize.FIRE.step, vectorised)."""
        p = self.params
        dt, a, n, started = state.unbind(1)
        vf = scatter_sum((f * v).sum(1), batch, dim_size=num_graphs)
        f2 = scatter_sum((f * f).sum(1), batch, dim_size=num_graphs)
        v2 = scatter_sum((v * v).sum(1), batch, dim_size=num_graphs)
        uphill = (started > 0) & (vf <= 0)
        downhill = (started > 0) & (vf > 0)
        mix = torch.where(downhill, a, torch.zeros_like(a))
        scale = torch.where(downhill, a * v2.sqrt() / f2.sqrt().clamp_min(1e-300), torch.zeros_like(a))
        v = (1 - mix)[batch, None] * v + scale[batch, None] * f
        v = torch.where(uphill[batch, None], torch.zeros_like(v), v)
        grow = downhill & (n > p.n_min)
        dt = torch.where(grow, (dt * p.finc).clamp(max=p.dtmax), dt)
        a = torch.where(grow, a * p.fa, a)
        n = torch.where(downhill, n + 1, n)
        a = torch.where(uphill, torch.full_like(a, p.astart), a)
        dt = torch.where(uphill, dt * p.fdec, dt)
        n = torch.where(uphill, torch.zeros_like(n), n)
        v = v + dt[batch, None] * f
        dr = dt[batch, None] * v
        norm = scatter_sum((dr * dr).sum(1), batch, dim_size=num_graphs).sqrt()
        dr = dr * (p.maxstep / norm.clamp_min(p.maxstep))[batch, None]
        return x + dr, v, torch.stack([dt, a, n, torch.ones_like(started)], dim=1)

    def _result(self, slot: _Slot, status: str, positions, forces, batch, k: int, fmax: float) -> RelaxResult:
        atoms = slot.atoms.copy()
        volume = cell_volume(atoms)
        result = RelaxResult(slot.index, slot.source, atoms.get_chemical_formula(), status, steps=slot.steps,
                             energy_initial=slot.energies[0], volume_initial=volume, energies=slot.energies)
        if status == FAILED:
            result.message = slot.message or f"energy or forces became non-finite at step {slot.steps}"
            return result
        atom_range = slice(int(batch.ptr[k]), int(batch.ptr[k]) + len(atoms))
        atoms.positions = positions[atom_range].cpu().double().numpy()
        result.energy_final, result.fmax_final, result.max_force = slot.energies[-1], fmax, fmax
        result.volume_final = volume
        result.atoms = with_results(atoms, result.energy_final, forces[atom_range].cpu().double().numpy())
        return result
