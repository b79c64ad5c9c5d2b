"""MACE's symmetric contraction (Eq. 10) through cuequivariance, on our weights.

cuequivariance spans the same space of symmetric equivariant polynomials as
`mlip.nn.symmetric_contraction.SymmetricContraction`, in another basis. The change of
basis T is found once by probing both with unit weights on random inputs (one channel,
one element) and solving ``Y_cueq T = Y_ours`` by least squares; a residual above
round-off means the bases do not span the same space and is an error. At each call
our weights ``W[z, k, p]`` become cuequivariance's ``Σ_p T[q, p] W[z, k, p]``, so
gradients flow to our parameters and a model moves between backends unchanged.
"""

from __future__ import annotations

import torch
from e3nn import o3

try:
    import cuequivariance as cue
    import cuequivariance_torch as cuet
except ImportError:
    cue = cuet = None


def _cueq_module(irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, num_elements: int, device, dtype):
    return cuet.SymmetricContraction(
        cue.Irreps("O3", str(irreps_in)),
        cue.Irreps("O3", str(irreps_out)),
        correlation,
        num_elements,
        layout=cue.mul_ir,
        device=device,
        dtype=dtype,
        original_mace=False,
        method=None if torch.device(device).type == "cuda" else "naive",
    )


def _cueq_call(module, weight: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """cuet.SymmetricContraction's forward with an external weight [Z, P, mul]."""
    if module.projection is not None:
        weight = torch.einsum("zau,ab->zbu", weight, module.projection)
    output = module.f([weight.flatten(1), module.transpose_in(x)], input_indices={0: indices})
    return module.transpose_out(output[0])


class CueqContraction:
    """The cuequivariance evaluation of a `SymmetricContraction`, kept outside its state dict."""

    def __init__(self, contraction, device: torch.device, dtype: torch.dtype):
        from mlip.nn.symmetric_contraction import SymmetricContraction

        self.device, self.dtype = device, dtype
        num_channels = contraction.irreps_in[0].mul
        num_elements = next(iter(contraction.weights.values())).shape[0]
        self.module = _cueq_module(contraction.irreps_in, contraction.irreps_out, contraction.correlation,
                                   num_elements, device, dtype)
        # probe in float64: "element" j carries unit weight j (in every channel), so one call
        # evaluates every basis function on the same random inputs. cuequivariance builds
        # its basis symbolically (minutes for l <= 3, correlation 3), so its module is built
        # once and reused for the probe with an external weight of any element count.
        names = [name for paths in contraction.paths for _, name in paths]
        sizes = [contraction.weights[name].shape[-1] for name in names]
        p_ours = sum(sizes)
        ours = SymmetricContraction(contraction.irreps_in, contraction.irreps_out, contraction.correlation, p_ours)
        ours = ours.to(device, torch.float64)
        with torch.no_grad():
            offset = 0
            for name, size in zip(names, sizes):
                weight = ours.weights[name]
                weight.zero_()
                weight[torch.arange(offset, offset + size), :, torch.arange(size)] = 1.0
                offset += size
        theirs = self.module.to(torch.float64)
        p_theirs = theirs.weight.shape[1]
        generator = torch.Generator().manual_seed(0)
        samples = max(p_ours, p_theirs) // num_channels + 8
        x = torch.randn(samples, contraction.irreps_in.dim, generator=generator, dtype=torch.float64).to(device)

        def columns(module_call, count):
            species = torch.arange(count, device=device).repeat_interleave(samples)
            return module_call(x.repeat(count, 1), species).reshape(count, -1).T  # [samples * out, count]

        with torch.no_grad():
            y_ours = columns(ours, p_ours)
            identity = torch.eye(p_theirs, dtype=torch.float64, device=device)[:, :, None].expand(-1, -1, num_channels)
            y_theirs = columns(lambda xs, zs: _cueq_call(theirs, identity, xs, zs), p_theirs)
        self.module = theirs.to(dtype)
        transform = torch.linalg.lstsq(y_theirs.cpu(), y_ours.cpu()).solution  # [P_theirs, P_ours]
        residual = (y_theirs.cpu() @ transform - y_ours.cpu()).abs().max() / y_ours.abs().max().cpu()
        if residual > 1e-9:
            raise RuntimeError(f"cuequivariance's symmetric contraction does not span our basis (residual {residual:.1e})")
        self.names, self.num_channels = names, num_channels
        self.transform = transform.to(device, dtype)

    def __call__(self, contraction, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        ours = torch.cat([contraction.weights[name] for name in self.names], dim=-1)  # [Z, K, P_ours]
        weight = torch.einsum("qp,zkp->zqk", self.transform, ours)  # [Z, P_theirs, K]
        return _cueq_call(self.module, weight, node_feats, species)
