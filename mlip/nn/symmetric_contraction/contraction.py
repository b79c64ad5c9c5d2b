"""MACE's symmetric contraction (Eq. 10) as a layer: element-dependent weights on our basis.

The parameters and buffers live here; `torch_executor` (any device) or `cueq_executor`
(cuequivariance on CUDA) evaluates the call, both on the same weights.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from mlip.nn.irreps import channel_irreps
from mlip.nn.symmetric_contraction import torch_executor
from mlip.nn.symmetric_contraction.basis import compress_symmetric, coupling_frame, monomial_recursion, product_basis
from mlip.nn.tensor_product.backend import check_backend, uses_cueq


class SymmetricContraction(nn.Module):
    """Eq. 10 with element-dependent weights.

    Input ``[n_nodes, irreps_in.dim]`` with ``irreps_in = k x (l_1 + l_2 + ...)``, species
    ``[n_nodes]``; output ``[n_nodes, irreps_out.dim]`` with ``irreps_out = k x (L_1 + ...)``.

    Because each basis tensor is symmetric, the ν-fold product of A is only needed on
    sorted multi-indices (monomials ``A_{a_1} ... A_{a_ν}`` with a_1 <= ... <= a_ν):
    B = Σ_ν Σ_η w_η (U'_η · monomials_ν(A)), with U' the basis folded by `compress_symmetric`.

    ``normalization``: each basis tensor has unit norm over its 2L+1 components and the
    factors' indices (``"norm"``), or each component has (``"component"``: the tensors and
    so the weights' effect scaled by sqrt(2L+1), as e3nn and mace-torch normalise irreps).

    ``parametrization``: the weights are learned on our orthonormal basis (``"orthonormal"``:
    p weights per path, initialised N(0, 1/p²)), or on every Clebsch-Gordan coupling chain
    (``"coupling"``: k ≥ p weights, initialised N(0, 1/k²), acting through `coupling_frame`),
    as mace-torch's are. The functions are the same; the second trains the higher orders
    with a smaller start and larger Adam steps (docs/accuracy.md).
    """

    def __init__(
        self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, num_elements: int, backend: str = "e3nn",
        normalization: str = "norm", parametrization: str = "orthonormal",
    ):
        super().__init__()
        if parametrization not in ("orthonormal", "coupling"):
            raise ValueError(f"parametrization must be 'orthonormal' or 'coupling', got {parametrization!r}")
        # which executor evaluates a call: `torch_executor`, or `cueq_executor` on CUDA (see `uses_cueq`)
        self.backend = check_backend(backend)
        self.__dict__["_cueq"] = None  # built on first CUDA use, kept out of the state dict
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.correlation = int(correlation)
        num_channels, per_channel_in = channel_irreps(self.irreps_in)
        num_channels_out, per_channel_out = channel_irreps(self.irreps_out)
        assert num_channels == num_channels_out, f"channels differ: {self.irreps_in} vs {self.irreps_out}"
        self.per_channel_out = per_channel_out
        dtype = torch.get_default_dtype()
        # Monomials of degree ν are built from those of degree ν-1: A_{a_1..a_ν} = A_{a_1..a_{ν-1}} A_{a_ν}.
        for nu in range(2, self.correlation + 1):
            parent, last = monomial_recursion(per_channel_in.dim, nu)
            self.register_buffer(f"parent_{nu}", parent, persistent=False)
            self.register_buffer(f"last_{nu}", last, persistent=False)
        if normalization not in ("norm", "component"):
            raise ValueError(f"normalization must be 'norm' or 'component', got {normalization!r}")
        self.weights = nn.ParameterDict()
        self.weight_scale: dict[str, float] = {}  # the basis normalisation, applied to the weights
        self.paths: list[list[tuple[int, str]]] = []  # per output irrep: (ν, name) with a non-empty basis
        for i_out, (_, ir_out) in enumerate(per_channel_out):
            paths = []
            for nu in range(1, self.correlation + 1):
                basis = product_basis(per_channel_in, nu, ir_out)
                if basis.shape[0] == 0:
                    continue
                name = f"{i_out}_{nu}"
                self.register_buffer(f"basis_{name}", compress_symmetric(basis, nu).to(dtype))
                if parametrization == "coupling":
                    self.register_buffer(f"frame_{name}", coupling_frame(per_channel_in, nu, ir_out).to(dtype))
                size = getattr(self, f"frame_{name}").shape[0] if parametrization == "coupling" else basis.shape[0]
                weight = torch.randn(num_elements, num_channels, size, dtype=dtype) / size
                self.weights[name] = nn.Parameter(weight)
                self.weight_scale[name] = math.sqrt(ir_out.dim) if normalization == "component" else 1.0
                paths.append((nu, name))
            self.paths.append(paths)

    def forward(self, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """[n, irreps_in.dim], species [n] -> [n, irreps_out.dim], by the executor ``backend`` picks."""
        if uses_cueq(self.backend, node_feats):
            return self.forward_cueq(node_feats, species)
        return torch_executor.evaluate(self, node_feats, species)

    def scaled_weight(self, name: str) -> torch.Tensor:
        """The weights of path ``name`` on our basis, times its normalisation: [num_elements, k, n_basis]."""
        weight = self.weights[name]
        frame = getattr(self, f"frame_{name}", None)
        if frame is not None:
            weight = weight @ frame
        scale = self.weight_scale[name]
        return weight if scale == 1.0 else weight * scale

    def forward_cueq(self, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """The same contraction evaluated by cuequivariance on our weights (any device it supports)."""
        from mlip.nn.symmetric_contraction.cueq_executor import CueqContraction

        cached = self.__dict__["_cueq"]
        if cached is None or cached.device != node_feats.device or cached.dtype != node_feats.dtype:
            cached = CueqContraction(self, node_feats.device, node_feats.dtype)
            self.__dict__["_cueq"] = cached
        return cached(self, node_feats, species)

