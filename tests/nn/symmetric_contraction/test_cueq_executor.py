"""The cuequivariance executor of the symmetric contraction equals the torch one on our weights
(cuequivariance's torch fallback on the CPU), and keeps what it derives on disk."""

import importlib.util

import pytest
import torch
from e3nn import o3

from mlip.nn.symmetric_contraction import SymmetricContraction, cueq_executor

pytest.importorskip("cuequivariance_torch")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cuequivariance_ops_torch") is not None,
    reason="cuequivariance's CPU fallback does not run once its CUDA ops are installed (tests/gpu covers CUDA)",
)


@pytest.mark.parametrize("irreps_in, irreps_out, correlation", [
    ("4x0e+4x1o+4x2e", "4x0e+4x1o", 3),
    ("3x0e+3x1o", "3x0e", 2),
])  # l <= 3 inputs take cuequivariance minutes to build its basis: tests/gpu covers them
def test_cueq_symmetric_contraction_on_our_weights_equals_ours(irreps_in, irreps_out, correlation):
    """cuequivariance's basis differs from ours; the change of basis makes them agree, gradients included."""
    torch.manual_seed(0)
    contraction = SymmetricContraction(o3.Irreps(irreps_in), o3.Irreps(irreps_out), correlation, 3, backend="cueq")
    x = torch.randn(11, o3.Irreps(irreps_in).dim, requires_grad=True)
    species = torch.randint(0, 3, (11,))
    ours, theirs = contraction(x, species), contraction.forward_cueq(x, species)
    assert torch.allclose(ours, theirs, atol=1e-12)
    parameters = [x, *contraction.weights.values()]
    for u, v in zip(torch.autograd.grad(ours.square().sum(), parameters),
                    torch.autograd.grad(theirs.square().sum(), parameters)):
        assert torch.allclose(u, v, atol=1e-11)


def test_cueq_polynomial_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path))
    cueq_executor.polynomial.cache_clear()
    built = cueq_executor.polynomial("2x0e+2x1o", "2x0e", 2)
    (cached,) = (tmp_path / "cueq").iterdir()
    assert not list((tmp_path / "cueq").glob("*.partial"))
    cueq_executor.polynomial.cache_clear()
    assert cueq_executor.polynomial("2x0e+2x1o", "2x0e", 2).polynomial == built.polynomial  # read back
    cueq_executor.polynomial.cache_clear()
    assert cueq_executor.polynomial("2x0e+2x1o", "2x1o", 2).polynomial != built.polynomial  # another key, another file
    assert len(list((tmp_path / "cueq").iterdir())) == 2
    cueq_executor.polynomial.cache_clear()


def test_cueq_change_of_basis_is_cached_on_disk_under_a_digest_of_our_basis(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path))
    cueq_executor.change_of_basis.cache_clear()
    probed = cueq_executor.change_of_basis("2x0e+2x1o", "2x0e+2x1o", 2, "cpu")
    files = sorted(p.name for p in (tmp_path / "cueq").glob("change_of_basis-*.pkl"))
    assert len(files) == 1
    cueq_executor.change_of_basis.cache_clear()
    calls = []
    monkeypatch.setattr(cueq_executor, "_probe_change_of_basis", lambda *args: calls.append(args))
    torch.testing.assert_close(cueq_executor.change_of_basis("2x0e+2x1o", "2x0e+2x1o", 2, "cpu"), probed, rtol=0, atol=0)
    assert not calls  # read back, not probed again
    cueq_executor.change_of_basis.cache_clear()


def test_cueq_contraction_follows_a_stored_basis_built_elsewhere():
    """A model file may hold a basis that differs from the one built here by a rotation within
    degenerate singular subspaces (another LAPACK): the cuequivariance path must follow it."""
    torch.manual_seed(1)
    irreps_in, irreps_out = o3.Irreps("3x0e+3x1o+3x2e"), o3.Irreps("3x0e+3x1o")
    contraction = SymmetricContraction(irreps_in, irreps_out, 3, 2, backend="cueq").double()
    x, species = torch.randn(9, irreps_in.dim, dtype=torch.float64), torch.randint(0, 2, (9,))
    before = contraction(x, species)
    with torch.no_grad():  # the same function on a rotated basis: B -> Q B, W -> W Q^T
        for name, weight in contraction.weights.items():
            basis = getattr(contraction, f"basis_{name}")
            q, _ = torch.linalg.qr(torch.randn(basis.shape[0], basis.shape[0], dtype=torch.float64))
            basis.copy_(torch.einsum("pq,q...->p...", q, basis))
            weight.copy_(weight @ q.T)
    torch.testing.assert_close(contraction(x, species), before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(contraction.forward_cueq(x, species), before, rtol=1e-10, atol=1e-12)
