"""Facet on CUDA: the same predictions as on the CPU (spline kernel, grid MLP, cueq or grid
convolution), and replayed from a CUDA graph; on the device machine."""

import pytest
import torch

from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.cuda_graph import GraphedPotential
from tests.conftest import random_alloy
from tests.models.test_facet import _facet

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("backend", ["auto", "grid"])
def test_facet_on_cuda_equals_the_cpu_and_its_cuda_graph(backend, rng):
    cpu = _facet(tp_backend=backend, hidden_irreps="8x0e+8x1o+8x2e").requires_grad_(False)
    gpu = _facet(tp_backend=backend, hidden_irreps="8x0e+8x1o+8x2e").cuda().requires_grad_(False)
    graphed = GraphedPotential(gpu)
    for repeat in [(2, 2, 2), (2, 2, 1)]:
        graph = structure_to_graph(structure_from_atoms(random_alloy(rng, repeat), "t"), 4.0)
        reference = cpu(graph, compute_stress=True)
        for out in (gpu(graph.to("cuda"), compute_stress=True), graphed(graph.to("cuda"))):
            for key in ("energy", "forces", "stress"):
                torch.testing.assert_close(out[key].cpu(), reference[key], rtol=1e-9, atol=1e-10)
