"""Short molecular dynamics through ASE's integrators with an mlip calculator.

- ``nve``: velocity Verlet (`ase.md.verlet.VelocityVerlet`).
- ``nvt``: Langevin (`ase.md.langevin.Langevin`), ``friction`` in 1/fs.
- ``npt``: Berendsen thermostat and barostat (`ase.md.nptberendsen.NPTBerendsen`),
  ``pressure`` in GPa, ``compressibility`` in 1/GPa, coupling times in fs.

Velocities start from a Maxwell-Boltzmann distribution at ``temperature`` (K) with
no centre-of-mass motion (and no rotation for molecules). The run records potential,
kinetic and total energy (eV), temperature (K) and volume (Å³) every ``interval``
steps, and reports the total-energy drift in eV/atom/ps (the slope of a least-squares
line; meaningful for NVE). A non-finite energy stops the run and marks it failed.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.nptberendsen import NPTBerendsen
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlip.atomic import atomic_write_bytes
from mlip.simulation.relax import cell_volume

ENSEMBLES = ("nve", "nvt", "npt")


class MDError(RuntimeError):
    """A trajectory that cannot go on (non-finite energy or forces)."""


@dataclass
class MDResult:
    """Time series of one run (``time`` in fs) and its energy drift."""

    ensemble: str
    n_atoms: int
    status: str = "completed"
    message: str = ""
    time: list[float] = field(default_factory=list)
    potential: list[float] = field(default_factory=list)
    kinetic: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)

    @property
    def total(self) -> np.ndarray:
        return np.asarray(self.potential) + np.asarray(self.kinetic)

    @property
    def drift(self) -> float:
        """Slope of the total energy per atom against time, eV/atom/ps."""
        if len(self.time) < 2:
            return math.nan
        slope = np.polyfit(np.asarray(self.time) / 1000.0, self.total / self.n_atoms, 1)[0]
        return float(slope)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time_fs", "potential_eV", "kinetic_eV", "total_eV", "temperature_K", "volume_A3"])
        for row in zip(self.time, self.potential, self.kinetic, self.total, self.temperature, self.volume):
            writer.writerow([f"{x:.10g}" for x in row])
        return out.getvalue()


def integrator(atoms: Atoms, ensemble: str, timestep: float, temperature: float, friction: float, pressure: float,
               taut: float, taup: float, compressibility: float, rng: np.random.Generator):
    """The ASE dynamics object for ``ensemble`` (units as in the module docstring)."""
    dt = timestep * units.fs
    if ensemble == "nve":
        return VelocityVerlet(atoms, dt)
    if ensemble == "nvt":
        return Langevin(atoms, dt, temperature_K=temperature, friction=friction / units.fs, fixcm=False, rng=rng)
    if ensemble == "npt":
        if not atoms.pbc.all():
            raise ValueError(f"npt needs a cell periodic in all three directions; pbc={atoms.pbc.tolist()}")
        return NPTBerendsen(atoms, dt, temperature_K=temperature, pressure_au=pressure * units.GPa,
                            taut=taut * units.fs, taup=taup * units.fs, compressibility_au=compressibility / units.GPa)
    raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")


def run_md(
    atoms: Atoms,
    calculator,
    ensemble: str = "nve",
    timestep: float = 1.0,
    steps: int = 1000,
    temperature: float = 300.0,
    friction: float = 0.01,
    pressure: float = 0.0,
    taut: float = 100.0,
    taup: float = 1000.0,
    compressibility: float = 0.01,
    seed: int = 0,
    interval: int = 1,
    trajectory: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[MDResult, Atoms]:
    """Run ``steps`` steps of ``timestep`` fs on a copy of ``atoms``; returns the record and the
    final atoms. ``progress``: a tqdm bar of the steps (with the temperature) on stderr."""
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dynamics = integrator(atoms, ensemble, timestep, temperature, friction, pressure, taut, taup, compressibility, rng)
    result = MDResult(ensemble, len(atoms))
    writer = None if trajectory is None else Trajectory(Path(f"{trajectory}.partial"), "w", atoms)

    def record() -> None:
        energy = atoms.get_potential_energy()
        if not (math.isfinite(energy) and np.isfinite(atoms.get_forces()).all()):
            raise MDError(f"energy or forces became non-finite at step {dynamics.nsteps}")
        result.time.append(dynamics.nsteps * timestep)
        result.potential.append(float(energy))
        result.kinetic.append(float(atoms.get_kinetic_energy()))
        result.temperature.append(float(atoms.get_temperature()))
        result.volume.append(cell_volume(atoms))
        if writer is not None:
            writer.write(atoms)

    dynamics.attach(record, interval=interval)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc=f"md ({ensemble})", unit="step", disable=not progress)

    def advance() -> None:  # observers run at the start too: count the steps done, not the calls
        bar.update(dynamics.nsteps - bar.n)
        if result.temperature and dynamics.nsteps % max(interval, 10) == 0:
            bar.set_postfix(T=f"{result.temperature[-1]:.0f} K", refresh=False)

    dynamics.attach(advance, interval=1)
    try:
        dynamics.run(steps)
    except MDError as exc:
        result.status, result.message = "failed", str(exc)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            os.replace(f"{trajectory}.partial", trajectory)
    return result, atoms


def write_md(result: MDResult, output_dir: str | os.PathLike) -> Path:
    """``md_log.csv`` in ``output_dir``, written atomically."""
    path = Path(output_dir) / "md_log.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, result.csv().encode())
    return path
