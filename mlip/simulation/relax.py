"""Relaxations one structure at a time through ASE's optimizers, and the summary they write.

`relax` moves positions (and, with ``relax_cell``, the cell through
`ase.filters.FrechetCellFilter` at a given pressure) until the largest force is below
``fmax`` or ``steps`` steps have run. Fixed atoms (`FixAtoms`, e.g. OC20's subsurface)
stay where they are. A structure the model cannot be trusted on, or a run whose energy
or forces become NaN/inf, ends as ``failed`` with the reason; nothing is raised, so a
batch of structures carries on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.io.trajectory import Trajectory
from ase.optimize import BFGS, FIRE, LBFGS

from mlip.atomic import atomic_write_bytes

OPTIMIZERS = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS}
CONVERGED, NOT_CONVERGED, FAILED = "converged", "not converged", "failed"


class RelaxationError(RuntimeError):
    """A relaxation that cannot go on (non-finite energy or forces)."""


@dataclass
class RelaxResult:
    """One structure's relaxation. Energies in eV, forces in eV/Å, volumes in Å³."""

    index: int
    source: str
    formula: str
    status: str
    steps: int = 0
    energy_initial: float = math.nan
    energy_final: float = math.nan
    fmax_final: float = math.nan  # largest force the optimiser saw (cell forces included with relax_cell)
    max_force: float = math.nan  # largest atomic force, constraints applied
    volume_initial: float = math.nan
    volume_final: float = math.nan
    message: str = ""
    energies: list[float] = field(default_factory=list, repr=False)  # energy trace, one per force call
    atoms: Atoms | None = field(default=None, repr=False)  # the relaxed structure (None when failed)

    @property
    def energy_change(self) -> float:
        return self.energy_final - self.energy_initial

    @property
    def volume_change(self) -> float:
        """Relative volume change (0 for molecules)."""
        return self.volume_final / self.volume_initial - 1.0 if self.volume_initial > 0 else 0.0

    def row(self) -> dict:
        """The summary-table row (no arrays)."""
        row = {k: v for k, v in asdict(self).items() if k not in ("energies", "atoms")}
        row.update(energy_change=self.energy_change, volume_change=self.volume_change)
        return row


def cell_volume(atoms: Atoms) -> float:
    """Å³ of a cell periodic in all three directions, 0 otherwise (molecules, slabs with vacuum axes)."""
    return float(atoms.get_volume()) if atoms.pbc.all() else 0.0


def _largest_force(forces: np.ndarray) -> float:
    return float(np.sqrt((forces**2).sum(axis=1).max())) if len(forces) else 0.0


def with_results(atoms: Atoms, energy: float, forces: np.ndarray, stress: np.ndarray | None = None) -> Atoms:
    """A copy of ``atoms`` carrying its own results (a shared calculator's change with the next call)."""
    atoms = atoms.copy()
    results = {"energy": energy, "free_energy": energy, "forces": forces}
    if stress is not None:
        results["stress"] = stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def relax(
    atoms: Atoms,
    calculator,
    optimizer: str = "fire",
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = False,
    pressure: float = 0.0,
    trajectory: str | os.PathLike | None = None,
    index: int = 0,
) -> RelaxResult:
    """Relax a copy of ``atoms`` with ``calculator``; ``pressure`` in GPa (with ``relax_cell``).

    Returns a `RelaxResult` whose ``status`` is converged, not converged or failed.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    atoms = atoms.copy()
    atoms.calc = calculator
    source = str(atoms.info.get("source", f"structure {index}"))
    result = RelaxResult(index, source, atoms.get_chemical_formula(), FAILED, volume_initial=cell_volume(atoms))
    if relax_cell and not atoms.pbc.all():
        result.message = f"relax_cell needs a cell periodic in all three directions; pbc={atoms.pbc.tolist()}"
        return result
    target = FrechetCellFilter(atoms, scalar_pressure=pressure * units.GPa) if relax_cell else atoms
    opt = OPTIMIZERS[optimizer](target, logfile=None)
    writer = None
    partial = None
    if trajectory is not None:
        partial = Path(f"{trajectory}.partial")
        writer = Trajectory(partial, "w", atoms)

    def observe() -> None:
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            raise RelaxationError(f"energy or forces became non-finite (energy {energy}) at step {opt.nsteps}")
        result.energies.append(float(energy))
        if writer is not None:
            writer.write(atoms)

    opt.attach(observe, interval=1)
    try:
        converged = opt.run(fmax=fmax, steps=steps)
        result.status = CONVERGED if converged else NOT_CONVERGED
        result.fmax_final = _largest_force(target.get_forces())
        result.max_force = _largest_force(atoms.get_forces())
        result.energy_final = float(atoms.get_potential_energy())
        result.volume_final = cell_volume(atoms)
        result.atoms = with_results(atoms, result.energy_final, atoms.get_forces(apply_constraint=False),
                                    atoms.get_stress() if atoms.pbc.all() else None)
    except (RelaxationError, ValueError, RuntimeError, FloatingPointError) as exc:
        result.message = str(exc)
    finally:
        if writer is not None:
            writer.close()
            os.replace(partial, trajectory)
    result.steps = opt.nsteps
    if result.energies:
        result.energy_initial = result.energies[0]
    return result


def write_results(results: list[RelaxResult], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``relaxed.extxyz`` (structures that did not fail, with energy/forces/stress),
    ``summary.csv`` and ``summary.json`` into ``output_dir``, each atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    for result in results:
        if result.atoms is not None:
            atoms = result.atoms
            atoms.info.update(relax_status=result.status, relax_steps=result.steps)
            ase.io.write(text, atoms, format="extxyz")
    rows = [result.row() for result in results]
    table = io.StringIO()
    if rows:
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths = {"relaxed": output_dir / "relaxed.extxyz", "csv": output_dir / "summary.csv",
             "json": output_dir / "summary.json"}
    atomic_write_bytes(paths["relaxed"], text.getvalue().encode())
    atomic_write_bytes(paths["csv"], table.getvalue().encode())
    atomic_write_bytes(paths["json"], json.dumps(rows, indent=1, default=float).encode())
    return paths


def format_summary(results: list[RelaxResult], max_rows: int = 50) -> str:
    """A plain-text table: one line per structure (the first ``max_rows``; the files hold all),
    then a count of each status and every failure with its reason."""
    head = f"{'#':>4} {'structure':<28} {'status':<14} {'steps':>5} {'ΔE eV':>10} {'fmax eV/Å':>10} {'ΔV %':>7}"
    lines = [head, "-" * len(head)]
    for r in results[:max_rows]:
        lines.append(f"{r.index:>4} {r.source[-28:]:<28} {r.status:<14} {r.steps:>5} {r.energy_change:>10.4f} "
                     f"{r.fmax_final:>10.4f} {100 * r.volume_change:>7.2f}")
    if len(results) > max_rows:
        lines.append(f"... {len(results) - max_rows} more rows in summary.csv")
    counts = {status: sum(r.status == status for r in results) for status in (CONVERGED, NOT_CONVERGED, FAILED)}
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    lines += [f"  failed: {r.source}: {r.message}" for r in results if r.status == FAILED]
    return "\n".join(lines)


def relax_all(
    items: Iterable[tuple[int, str, Atoms | Exception]],
    make_calculator: Callable[[], object],
    progress: bool = True,
    trajectory_dir: str | os.PathLike | None = None,
    **options,
) -> list[RelaxResult]:
    """Relax each (index, source, atoms) in turn (``options`` as in `relax`); an item whose
    atoms are an exception (a structure that failed its checks) becomes a failed result."""
    from tqdm.auto import tqdm

    calculator = make_calculator()
    results = []
    items = list(items)
    for index, source, item in tqdm(items, desc="relax", unit="structure", disable=not progress):
        if isinstance(item, Exception):
            results.append(RelaxResult(index, source, "", FAILED, message=str(item)))
            continue
        trajectory = None if trajectory_dir is None else Path(trajectory_dir) / f"{index:05d}.traj"
        results.append(relax(item, calculator, trajectory=trajectory, index=index, **options))
    return results
