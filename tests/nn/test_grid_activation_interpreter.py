"""The Triton kernel of the activation on the sphere, run by Triton's CPU interpreter (where Triton is installed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed (the interpreter runs the kernel on the CPU)")

SCRIPT = """
import torch
from e3nn import o3
from mlip.nn.kernels import grid_activation as ga
from mlip.nn.spherical import SphericalGrid
torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
irreps = lambda lmax: o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])
grid = SphericalGrid(irreps(3), 6, irreps_out=irreps(2))
m_in, m_out = grid.sample.T.contiguous(), grid.project.contiguous()
y, w, v, x = torch.randn(3, 16, 40), torch.randn(3, 9, 40), torch.randn(3, 16, 40), torch.randn(3, 9, 40)
for factors, mats, out, k in [((), (), m_out, 0), ((w,), (m_out,), m_in, 1), ((w, v), (m_out, m_in), m_in, 2),
                              ((w, v, x), (m_out, m_in, m_out), m_out, 3), ((v,), (m_in,), m_out, 4)]:
    a, b = ga.phi_torch(y, factors, mats, m_in, out, k), ga.phi_triton(y, factors, mats, m_in, out, k)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-12, (k, len(factors))
print("ok")
"""


def test_the_kernel_equals_the_twin_in_float64_under_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1",
                                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
