"""Relaxations: batched FIRE against ASE's FIRE, cell relaxation under pressure, failures."""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from mlip.calculator import MLIPCalculator
from mlip.data.readers.atoms import structure_from_atoms
from mlip.simulation.batched_fire import BatchedFIRE
from mlip.simulation.checks import StructureError, check_structure
from mlip.simulation.relax import CONVERGED, FAILED, NOT_CONVERGED, relax
from tests.conftest import random_alloy, random_cluster


def test_collapsing_structures_fail_at_the_same_step_on_both_paths(tiny_potential, rng):
    items = _structures(rng)
    reference = [relax(atoms, MLIPCalculator(tiny_potential), "fire", fmax=5e-4, steps=120, index=i)
                 for i, _, atoms in items]
    batched = BatchedFIRE(tiny_potential, fmax=5e-4, steps=120, max_structures=8).run(items)
    assert {r.status for r in reference} >= {CONVERGED, FAILED}
    for ours, theirs in zip(batched, reference):
        assert (ours.status, ours.steps) == (theirs.status, theirs.steps)
        np.testing.assert_allclose(ours.energies, theirs.energies, rtol=0, atol=1e-9)
        if theirs.status == FAILED:  # no collapsed structure is handed back as relaxed
            assert ours.atoms is None and theirs.atoms is None
            assert "apart" in ours.message and "overlapping atoms" in theirs.message


def _structures(rng):
    slab = random_alloy(rng, repeat=(1, 1, 2), rattle=0.15)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2]))
    return [(0, "bulk", random_alloy(rng, rattle=0.15)), (1, "cluster", random_cluster(rng, 6)), (2, "fixed", slab),
            (3, "bulk2", random_alloy(rng, rattle=0.2))]


@pytest.mark.parametrize("max_structures, skin", [(1, 0.0), (2, 0.0), (8, 0.0), (8, 1.0)])
def test_batched_fire_follows_ase_fire(tiny_potential, rng, max_structures, skin):
    items = _structures(rng)
    # the untrained model pulls some of these structures together until atoms nearly coincide:
    # here the collapse check is off on both paths (min_distance=0), so FIRE itself is compared
    calculator = MLIPCalculator(tiny_potential, min_distance=0.0)
    reference = [relax(atoms, calculator, "fire", fmax=5e-4, steps=120, index=i) for i, _, atoms in items]
    fire = BatchedFIRE(tiny_potential, fmax=5e-4, steps=120, max_structures=max_structures, skin=skin, min_distance=0.0)
    batched = fire.run(items)
    assert {r.status for r in reference} == {CONVERGED, NOT_CONVERGED}  # both endings are exercised
    for ours, theirs in zip(batched, reference):
        assert (ours.index, ours.status, ours.steps) == (theirs.index, theirs.status, theirs.steps)
        np.testing.assert_allclose(ours.energies, theirs.energies, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours.atoms.positions, theirs.atoms.positions, atol=1e-8)
        assert len(ours.energies) == ours.steps + 1
    fixed = batched[2].atoms
    np.testing.assert_array_equal(fixed.positions[:3], items[2][2].positions[:3])
    steps = max(r.steps for r in batched) + 1
    assert (fire.rebuilds < steps / 2) if skin else (fire.rebuilds >= steps)  # the skin saves rebuilds


@pytest.mark.parametrize("optimizer", ["fire", "bfgs", "lbfgs"])
def test_cell_relaxation_reaches_the_set_pressure(rng, optimizer):
    # EMT, not a random model: a random model has no repulsion and collapses under pressure
    atoms = random_alloy(rng, rattle=0.05)
    result = relax(atoms, EMT(), optimizer, fmax=1e-4, steps=2000, relax_cell=True, pressure=2.0)
    assert result.status == CONVERGED, result
    # at equilibrium under an external pressure p the stress is -p (ASE sign); the cell
    # force is V (σ + p) / N, so |σ + p| < fmax N / V
    tolerance = 1e-4 * len(atoms) / result.volume_final
    np.testing.assert_allclose(result.atoms.get_stress(voigt=False), -2.0 * units.GPa * np.eye(3), atol=tolerance)
    assert abs(result.volume_change) > 0.01 and result.energies[0] == result.energy_initial
    assert result.max_force < 1e-4 and result.steps == len(result.energies) - 1


class _Exploding(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        bad = self.calls > 3
        self.results = {"energy": np.nan if bad else -float(self.calls), "forces": np.ones((len(atoms), 3))}


def test_a_relaxation_that_explodes_fails_with_its_reason(tiny_potential, rng, tmp_path):
    result = relax(random_cluster(rng), _Exploding(), trajectory=tmp_path / "x.traj")
    assert result.status == FAILED and "non-finite" in result.message and result.atoms is None
    assert (tmp_path / "x.traj").is_file() and not list(tmp_path.glob("*.partial"))
    broken = tiny_potential
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    items = _structures(rng)[:2]
    results = BatchedFIRE(broken, max_structures=2).run(items)
    assert [r.status for r in results] == [FAILED, FAILED] and "non-finite" in results[0].message


def test_checks_name_unknown_overlapping_and_isolated_atoms(tiny_potential):
    def check(atoms):
        check_structure(structure_from_atoms(atoms, "in.xyz#3"), tiny_potential)

    with pytest.raises(StructureError, match=r"in.xyz#3: element Fe \(Z=26\)"):
        check(Atoms("CuFe", positions=[[0, 0, 0], [2.5, 0, 0]]))
    with pytest.raises(StructureError, match=r"in.xyz#3: atoms 0 and 1 are 0.100 Å apart.*overlapping"):
        check(Atoms("Cu2", positions=[[0, 0, 0], [0.1, 0, 0]]))
    with pytest.raises(StructureError, match=r"atom\(s\) 2 \(Ni\) have no neighbour within r_max = 4.0 Å"):
        check(Atoms("CuAuNi", positions=[[0, 0, 0], [2.5, 0, 0], [30, 0, 0]]))
    check(Atoms("Cu", positions=[[0, 0, 0]]))  # a lone atom is a valid (trivial) structure


@pytest.mark.parametrize("direct", [False, True])
def test_escaip_relaxes_batched_as_through_ase_in_both_force_modes(rng, direct):
    from tests.models.test_escaip import _escaip

    potential = _escaip(direct_forces=direct)
    items = _structures(rng)
    reference = [relax(atoms, MLIPCalculator(potential, min_distance=0.0), "fire", fmax=5e-4, steps=30, index=i)
                 for i, _, atoms in items]
    batched = BatchedFIRE(potential, fmax=5e-4, steps=30, max_structures=4, min_distance=0.0).run(items)
    for ours, theirs in zip(batched, reference):
        assert (ours.status, ours.steps) == (theirs.status, theirs.steps)
        np.testing.assert_allclose(ours.atoms.positions, theirs.atoms.positions, atol=1e-8)
