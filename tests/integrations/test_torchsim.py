"""The torch-sim model interface against our ASE calculator, and MD through torch-sim (the real program)."""

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim", reason="the torchsim extra (torch-sim-atomistic) is not installed")

from ase.build import bulk  # noqa: E402

from mlip.calculator import MLIPCalculator  # noqa: E402
from mlip.integrations.torchsim import MLIPModel  # noqa: E402
from tests.conftest import make_tiny_potential, random_alloy  # noqa: E402


# torch-sim 0.3 (the last for Python 3.11) names its integrators as functions that return
# (init, step); 0.4+ has ts.Integrator and separate nve_init / nve_step functions
NVT = getattr(getattr(ts, "Integrator", None), "nvt_langevin", None) or getattr(ts, "nvt_langevin", None)


def nve(model, dt, kT):
    """(init(state, seed), step(state)) of velocity Verlet in either API."""
    if hasattr(ts, "nve_init"):
        return (lambda state, seed: ts.nve_init(state, model, kT=kT, seed=seed),
                lambda state: ts.nve_step(state, model, dt=dt))
    init, update = ts.nve(model=model, dt=dt, kT=kT)
    return (lambda state, seed: init(state, seed=seed)), update


def mixed_cells(rng):
    """Periodic cells of different sizes, shapes and compositions."""
    cells = [random_alloy(rng, (1, 1, 1)), random_alloy(rng, (2, 1, 1)), random_alloy(rng, (1, 2, 2))]
    small = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)  # a primitive (non-orthogonal) cell
    small.numbers[::3] = 79
    small.positions += 0.05 * rng.standard_normal(small.positions.shape)
    return cells + [small]


def test_each_system_of_a_batch_equals_the_ase_calculator(rng):
    potential = make_tiny_potential(seed=2)
    model = MLIPModel(potential, device="cpu", dtype=torch.float64)
    systems = mixed_cells(rng)
    out = model(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))
    calc = MLIPCalculator(potential)
    start = 0
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = calc
        n = len(atoms)
        assert float(out["energy"][k]) == pytest.approx(atoms.get_potential_energy(), rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(out["forces"][start : start + n].numpy(), atoms.get_forces(), rtol=0, atol=1e-10)
        stress = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(out["stress"][k].numpy(), stress, rtol=0, atol=1e-10)
        start += n


def test_the_model_passes_torch_sims_own_validation():
    from torch_sim.models.interface import validate_model_outputs

    from mlip.models.potential import Potential
    from mlip.models.registry import build_model
    from tests.conftest import tiny_model_spec

    spec = tiny_model_spec(num_elements=2)
    potential = Potential(build_model(spec), [14, 26], [-1.0, -2.0], model_spec=spec)  # its systems: Si, Fe
    model = MLIPModel(potential, device="cpu", dtype=torch.float64)
    validate_model_outputs(model, torch.device("cpu"), torch.float64)


def test_batched_nvt_runs_and_nve_conserves_energy(rng):
    potential = make_tiny_potential(seed=2)
    model = MLIPModel(potential, device="cpu", dtype=torch.float64)
    systems = [random_alloy(rng, (2, 1, 1), rattle=0.02) for _ in range(3)]
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    final = ts.integrate(state, model, integrator=NVT, n_steps=50, temperature=300.0, timestep=0.001)
    assert final.positions.shape == state.positions.shape and torch.isfinite(final.positions).all()
    assert not torch.allclose(final.positions, state.positions)

    kT = torch.tensor(300.0 * ts.units.MetalUnits.temperature, dtype=torch.float64)
    dt = torch.tensor(0.0005 * ts.units.MetalUnits.time, dtype=torch.float64)  # 0.5 fs
    init, update = nve(model, dt, kT)
    md = init(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64), seed=0)

    def total():
        kinetic = ts.calc_kinetic_energy(momenta=md.momenta, masses=md.masses, system_idx=md.system_idx)
        return (md.energy + kinetic).clone()

    start = total()
    for _ in range(100):
        md = update(md)
    drift = (total() - start).abs() / torch.bincount(md.system_idx)
    assert float(drift.max()) < 2e-4  # eV/atom over 50 fs
