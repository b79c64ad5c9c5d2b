"""The symmetric contraction evaluated by cuequivariance (CUDA), on our weights.

cuequivariance spans the same space of symmetric equivariant polynomials as our basis
(`basis.product_basis`, evaluated by `torch_executor`), in another basis. The change of
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
from mlip.nn.irreps import channel_irreps, from_channels, to_channels
from mlip.nn.symmetric_contraction import torch_executor
from mlip.nn.symmetric_contraction.basis import compress_symmetric, monomial_recursion, product_basis
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


def _basis_columns(irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, x: torch.Tensor) -> torch.Tensor:
    """Our contraction's output for unit weight on each of our basis functions in turn (every
    channel alike) on inputs ``x`` [samples, irreps_in.dim]: [samples · irreps_out.dim, P_ours]."""
    num_channels, per_channel_in = channel_irreps(irreps_in)
    _, per_channel_out = channel_irreps(irreps_out)
    recursion = {nu: monomial_recursion(per_channel_in.dim, nu) for nu in range(2, correlation + 1)}
    recursion = {nu: (parent.to(x.device), last.to(x.device)) for nu, (parent, last) in recursion.items()}
    by_degree = torch_executor.monomials(to_channels(x, irreps_in), recursion)
    columns, offset = [], 0
    for _, ir_out in per_channel_out:
        for nu in range(1, correlation + 1):
            basis = product_basis(per_channel_in, nu, ir_out)
            if basis.shape[0] == 0:
                continue
            features = torch_executor.path_features(by_degree[nu], compress_symmetric(basis, nu).to(x.device))
            for j in range(features.shape[2]):
                out = x.new_zeros(x.shape[0], num_channels, per_channel_out.dim)
                out[:, :, offset : offset + ir_out.dim] = features[:, :, j]
                columns.append(from_channels(out, irreps_out).reshape(-1))
        offset += ir_out.dim
    return torch.stack(columns, dim=1).cpu()


def _probe_change_of_basis(irreps_in: str, irreps_out: str, correlation: int, device: str) -> torch.Tensor:
    """`change_of_basis` by evaluating both contractions on unit weights (float64) and solving for T."""
    irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
    num_channels = irreps_in[0].mul
    theirs = CueqEvaluation(polynomial(str(irreps_in), str(irreps_out), correlation), device, torch.float64)
    p_theirs = theirs.num_weights
    p_ours = sum(product_basis(channel_irreps(irreps_in)[1], nu, ir).shape[0]
                 for _, ir in channel_irreps(irreps_out)[1] for nu in range(1, correlation + 1))
    generator = torch.Generator().manual_seed(0)
    samples = max(p_ours, p_theirs) // num_channels + 8
    x = torch.randn(samples, irreps_in.dim, generator=generator, dtype=torch.float64).to(device)
    with torch.no_grad():
        y_ours = _basis_columns(irreps_in, irreps_out, correlation, x)  # [samples * out, P_ours]
        # cuequivariance with one "element" per weight of its own: element q carries unit weight q
        identity = torch.eye(p_theirs, dtype=torch.float64, device=device)[:, :, None].expand(-1, -1, num_channels)
        species = torch.arange(p_theirs, device=device).repeat_interleave(samples)
        y_theirs = theirs(identity, x.repeat(p_theirs, 1), species).reshape(p_theirs, -1).T.cpu()
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
