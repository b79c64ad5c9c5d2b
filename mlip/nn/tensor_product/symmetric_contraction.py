"""MACE's symmetric contraction (Eq. 10) through cuequivariance, on our weights.

cuequivariance spans the same space of symmetric equivariant polynomials as
`mlip.nn.symmetric_contraction.SymmetricContraction`, in another basis. The change of
basis T is found once by probing both with unit weights on random inputs (one channel,
one element) and solving ``Y_cueq T = Y_ours`` by least squares; a residual above
round-off means the bases do not span the same space and is an error. At each call
our weights ``W[z, k, p]`` become cuequivariance's ``Σ_p T[q, p] W[z, k, p]``, so
gradients flow to our parameters and a model moves between backends unchanged.

cuequivariance builds its polynomial symbolically, which takes 10-60 s per irreps
pair for ℓ ≤ 3 and correlation 3. It is therefore kept in memory and on disk
(``$MLIP_CACHE_DIR`` or ``~/.cache/mlip``, one pickle per irreps pair and
cuequivariance version, written atomically); delete the folder to rebuild.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import warnings
from pathlib import Path

import torch
from e3nn import o3

from mlip.atomic import atomic_write_bytes
from mlip.nn.irreps import channel_irreps
from mlip.nn.tensor_product.cache import cache_dir

try:
    import cuequivariance as cue
    import cuequivariance_torch as cuet
    from cuequivariance_torch.operations.symmetric_contraction import symmetric_contraction
except ImportError:
    cue = cuet = symmetric_contraction = None


def _read_cached(path: Path, key: str):
    """The value pickled at ``path`` under ``key`` (our own cache folder), or None."""
    if path.is_file():
        with open(path, "rb") as handle:
            cached_key, value = pickle.load(handle)
        if cached_key == key:
            return value
    return None


def _write_cached(path: Path, key: str, value) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, pickle.dumps((key, value)))
    except OSError as error:  # a read-only home: rebuild next time
        warnings.warn(f"could not cache cuequivariance's contraction in {path.parent}: {error}")


@functools.lru_cache(maxsize=None)
def polynomial(irreps_in: str, irreps_out: str, correlation: int):
    """cuequivariance's equivariant polynomial of the contraction (degrees 1..correlation)."""
    key = f"{cue.__version__}|{irreps_in}|{irreps_out}|{correlation}"
    path = cache_dir() / "cueq" / f"symmetric_contraction-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pkl"
    value = _read_cached(path, key)
    if value is None:
        value, _ = symmetric_contraction(cue.Irreps("O3", irreps_in), cue.Irreps("O3", irreps_out),
                                         range(1, correlation + 1))
        _write_cached(path, key, value)
    return value


class CueqEvaluation(torch.nn.Module):
    """cuequivariance's evaluation of a contraction polynomial: (weights [Z, P, mul], x, species) -> out."""

    def __init__(self, etp, device: torch.device, dtype: torch.dtype):
        super().__init__()
        cuda = torch.device(device).type == "cuda"
        method = "uniform_1d" if cuda and etp.all_same_segment_shape() else "naive"
        self.f = cuet.SegmentedPolynomial(etp.polynomial, method=method).to(device)
        self.transpose_in = cuet.TransposeIrrepsLayout(
            etp.inputs[1].irreps, source=cue.mul_ir, target=etp.inputs[1].layout, device=device
        )
        self.transpose_out = cuet.TransposeIrrepsLayout(
            etp.outputs[0].irreps, source=etp.outputs[0].layout, target=cue.mul_ir, device=device
        )
        self.num_weights = etp.inputs[0].dim // etp.inputs[1].irreps.muls[0]

    def forward(self, weight: torch.Tensor, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        output = self.f([weight.flatten(1), self.transpose_in(x)], input_indices={0: species})
        return self.transpose_out(output[0])


@functools.lru_cache(maxsize=None)
def change_of_basis(irreps_in: str, irreps_out: str, correlation: int, device: str) -> torch.Tensor:
    """T [P_cueq, P_ours] (float64, CPU) with ``cueq(T W) = ours(W)``, found by probing on ``device``
    once and kept in `cache_dir` (keyed by cuequivariance's version and a digest of our basis:
    the probe takes seconds to tens of seconds at ℓ = 3, ν = 3, in every new process)."""
    from mlip.nn.symmetric_contraction import product_basis

    _, per_channel_in = channel_irreps(o3.Irreps(irreps_in))
    _, per_channel_out = channel_irreps(o3.Irreps(irreps_out))
    digest = hashlib.sha256()
    for _, ir_out in per_channel_out:
        for nu in range(1, correlation + 1):
            digest.update(product_basis(per_channel_in, nu, ir_out).numpy().round(12).tobytes())
    key = f"{cue.__version__}|{irreps_in}|{irreps_out}|{correlation}|{digest.hexdigest()}"
    path = cache_dir() / "cueq" / f"change_of_basis-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pkl"
    transform = _read_cached(path, key)
    if transform is None:
        transform = _probe_change_of_basis(irreps_in, irreps_out, correlation, device)
        _write_cached(path, key, transform)
    return transform


def _probe_change_of_basis(irreps_in: str, irreps_out: str, correlation: int, device: str) -> torch.Tensor:
    """`change_of_basis` by evaluating both contractions on unit weights and solving for T."""
    from mlip.nn.symmetric_contraction import SymmetricContraction

    # one "element" per basis function of ours: element j carries unit weight j in every
    # channel, so one call evaluates all of them on the same random inputs
    # built in float64: its basis buffers take the default dtype, and a float32 basis moved to
    # float64 keeps its float32 rounding (a 1e-8 residual)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        probe = SymmetricContraction(o3.Irreps(irreps_in), o3.Irreps(irreps_out), correlation, 1)
        num_channels = probe.irreps_in[0].mul
        sizes = [probe.weights[name].shape[-1] for paths in probe.paths for _, name in paths]
        probe = SymmetricContraction(probe.irreps_in, probe.irreps_out, correlation, sum(sizes)).to(device)
    finally:
        torch.set_default_dtype(previous)
    p_ours = sum(sizes)
    with torch.no_grad():
        offset = 0
        for name in [name for paths in probe.paths for _, name in paths]:
            weight = probe.weights[name]
            size = weight.shape[-1]
            weight.zero_()
            weight[torch.arange(offset, offset + size), :, torch.arange(size)] = 1.0
            offset += size
    theirs = CueqEvaluation(polynomial(irreps_in, irreps_out, correlation), device, torch.float64)
    p_theirs = theirs.num_weights
    generator = torch.Generator().manual_seed(0)
    samples = max(p_ours, p_theirs) // num_channels + 8
    x = torch.randn(samples, probe.irreps_in.dim, generator=generator, dtype=torch.float64).to(device)

    def columns(evaluate, count):
        species = torch.arange(count, device=device).repeat_interleave(samples)
        return evaluate(x.repeat(count, 1), species).reshape(count, -1).T.cpu()  # [samples * out, count]

    with torch.no_grad():
        y_ours = columns(probe, p_ours)
        identity = torch.eye(p_theirs, dtype=torch.float64, device=device)[:, :, None].expand(-1, -1, num_channels)
        y_theirs = columns(lambda xs, zs: theirs(identity, xs, zs), p_theirs)
    transform = torch.linalg.lstsq(y_theirs, y_ours).solution
    residual = (y_theirs @ transform - y_ours).abs().max() / y_ours.abs().max()
    if residual > 1e-9:
        raise RuntimeError(f"cuequivariance's symmetric contraction does not span our basis (residual {residual:.1e})")
    return transform


def stored_to_fresh(contraction, name: str) -> torch.Tensor:
    """R [p, p] (float64) with ``stored basis = R · fresh basis`` for path ``name`` of ``contraction``:
    weights W on the stored basis act as W R on the one `product_basis` builds here. The identity
    when both came from the same linear algebra library; a rotation within degenerate singular
    subspaces (or a sign) when the model file was written on another."""
    from mlip.nn.symmetric_contraction import compress_symmetric, product_basis

    i_out, nu = (int(part) for part in name.split("_"))
    _, per_channel_in = channel_irreps(contraction.irreps_in)
    fresh = compress_symmetric(product_basis(per_channel_in, nu, contraction.per_channel_out[i_out].ir), nu)
    fresh = fresh.reshape(fresh.shape[0], -1)  # [p, M·T], float64
    stored = getattr(contraction, f"basis_{name}").detach().to("cpu", torch.float64).reshape(fresh.shape[0], -1)
    rotation = torch.linalg.lstsq(fresh.T, stored.T).solution.T
    residual = float((rotation @ fresh - stored).abs().max() / stored.abs().max())
    if residual > 1e-5:
        raise RuntimeError(f"the contraction's stored basis {name} does not span the symmetric space "
                           f"(residual {residual:.1e}): the model file is damaged")
    return rotation


class CueqContraction:
    """The cuequivariance evaluation of a `SymmetricContraction`, kept outside its state dict."""

    def __init__(self, contraction, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        key = (str(contraction.irreps_in), str(contraction.irreps_out), contraction.correlation)
        self.module = CueqEvaluation(polynomial(*key), device, dtype)
        self.names = [name for paths in contraction.paths for _, name in paths]
        # the transform is probed on a freshly built basis; the module's own (from a model file
        # made elsewhere) may differ by a rotation where singular values are degenerate
        rotation = torch.block_diag(*[stored_to_fresh(contraction, name) for name in self.names])
        transform = change_of_basis(*key, str(torch.device(device))) @ rotation.T
        self.transform = transform.to(device, dtype)

    def __call__(self, contraction, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        ours = torch.cat([contraction.scaled_weight(name) for name in self.names], dim=-1)  # [Z, K, P_ours]
        weight = torch.einsum("qp,zkp->zqk", self.transform, ours)  # [Z, P_theirs, K]
        return self.module(weight, node_feats, species)
