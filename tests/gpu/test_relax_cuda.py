"""Batched FIRE on CUDA follows ASE's FIRE through the CUDA-graph calculator, on the device machine."""

import numpy as np
import pytest
import torch

from mlip.calculator import MLIPCalculator
from mlip.simulation.batched_fire import BatchedFIRE
from mlip.simulation.relax import CONVERGED, NOT_CONVERGED, relax
from tests.conftest import make_tiny_potential
from tests.simulation.test_relax import _structures

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("skin", [0.0, 1.0])
def test_batched_fire_on_cuda_follows_ase_fire(rng, skin):
    potential = make_tiny_potential().cuda().requires_grad_(False)
    items = _structures(rng)
    # the untrained model pulls some structures together: the collapse check is off on both
    # paths (as in the CPU test), so FIRE itself is compared
    calculator = MLIPCalculator(potential, device="cuda", min_distance=0.0)  # one CUDA-graph replay per step
    reference = [relax(atoms, calculator, "fire", fmax=5e-4, steps=120, index=i) for i, _, atoms in items]
    batched = BatchedFIRE(potential, fmax=5e-4, steps=120, max_structures=3, skin=skin, min_distance=0.0).run(items)
    assert {r.status for r in reference} == {CONVERGED, NOT_CONVERGED}  # both endings are exercised
    for ours, theirs in zip(batched, reference):
        assert (ours.status, ours.steps) == (theirs.status, theirs.steps)
        np.testing.assert_allclose(ours.energies, theirs.energies, rtol=0, atol=1e-8)
        np.testing.assert_allclose(ours.atoms.positions, theirs.atoms.positions, atol=1e-7)
