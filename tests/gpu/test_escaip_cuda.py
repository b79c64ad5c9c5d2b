"""EScAIP on CUDA: the fused attention kernels against the CPU, in CUDA graphs, and force training."""

import pytest
import torch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.cuda_graph import GraphedPotential
from tests.conftest import random_alloy
from tests.models.test_escaip import _escaip

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("direct", [False, True])
def test_escaip_on_cuda_equals_the_cpu_and_its_cuda_graph(direct, rng):
    cpu = _escaip(direct_forces=direct).requires_grad_(False)
    gpu = _escaip(direct_forces=direct).cuda().requires_grad_(False)
    graphed = GraphedPotential(gpu)
    for repeat in [(2, 2, 2), (2, 2, 1)]:
        graph = structure_to_graph(structure_from_atoms(random_alloy(rng, repeat), "t"), 4.0)
        reference = cpu(graph, compute_stress=True)
        for out in (gpu(graph.to("cuda"), compute_stress=True), graphed(graph.to("cuda"))):
            for key in ("energy", "forces", "stress"):
                torch.testing.assert_close(out[key].cpu(), reference[key], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("direct, stress", [(False, False), (False, True), (True, False), (True, True)])
def test_escaip_trains_on_forces_and_stress_on_cuda_in_float32(direct, stress, rng):
    # training on forces by autograd or on stress differentiates twice: the attention must run where that exists
    torch.set_default_dtype(torch.float32)
    try:
        potential = _escaip(direct_forces=direct).cuda().float().train()
        graph = structure_to_graph(structure_from_atoms(random_alloy(rng, (2, 2, 2)), "t"), 4.0).to("cuda")
        out = potential(graph, compute_stress=stress, create_graph=True)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        (loss + out["stress"].pow(2).sum() if stress else loss).backward()
        grads = [p.grad for p in potential.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    finally:
        torch.set_default_dtype(torch.float64)
