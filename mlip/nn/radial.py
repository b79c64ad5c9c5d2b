"""Radial embeddings of interatomic distances.

Bessel basis with a polynomial cutoff envelope (Klicpera et al. 2020, as used by
MACE Eq. 8), optionally of an Agnesi-transformed distance (`AgnesiTransform`, as in
mace-torch's foundation models), and the radial MLP that turns it into tensor-product
weights; or, as in Facet (Miklaucic et al. 2025), the weights as learned cubic splines of
the distance (`SplineRadial`, one fused kernel on the GPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mlip.nn.kernels.spline import knot_spacing, spline_contract


class BesselBasis(nn.Module):
    """``b_n(r) = sqrt(2/r_max) sin(n π r / r_max) / r`` for n = 1..num_basis.

    Input [n_edges, 1] Å -> output [n_edges, num_basis].
    """

    def __init__(self, r_max: float, num_basis: int = 8):
        super().__init__()
        self.r_max = float(r_max)
        self.register_buffer("frequencies", math.pi / r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()))
        self.register_buffer("prefactor", torch.tensor(math.sqrt(2.0 / r_max), dtype=torch.get_default_dtype()))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.prefactor * torch.sin(self.frequencies * r) / r


def polynomial_envelope(r: torch.Tensor, r_max: float | torch.Tensor, p: int) -> torch.Tensor:
    """``f(u) = 1 - (p+1)(p+2)/2 u^p + p(p+2) u^(p+1) - p(p+1)/2 u^(p+2)`` for u = r/r_max < 1, else 0
    (``r_max`` a number or one per entry of ``r``)."""
    u = r / r_max
    envelope = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * u**p
        + p * (p + 2.0) * u ** (p + 1)
        - p * (p + 1.0) / 2.0 * u ** (p + 2)
    )
    return envelope * (u < 1.0)


class PolynomialCutoff(nn.Module):
    """Smooth envelope that goes to zero at r_max with p continuous derivatives (`polynomial_envelope`)."""

    def __init__(self, r_max: float, p: int = 5):
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return polynomial_envelope(r, self.r_max, self.p)


def covalent_radii(atomic_numbers: Sequence[int]) -> torch.Tensor:
    """ASE's covalent radii (Å) of ``atomic_numbers``, in the default dtype: [len(atomic_numbers)]."""
    from ase.data import covalent_radii as table

    return torch.tensor([float(table[int(z)]) for z in atomic_numbers], dtype=torch.get_default_dtype())


class AgnesiTransform(nn.Module):
    """The Agnesi transform of a distance (ACEpotentials.jl, Witt et al., JCP 2023, "radial
    transformations"), as mace-torch's foundation models apply it before the radial basis:

        x(r) = 1 / (1 + a (r/r_0)^q / (1 + (r/r_0)^(q - p))),   r_0 = (r_cov(z_i) + r_cov(z_j)) / 2

    so that the basis resolves short bonds of each element pair alike. ``atomic_numbers`` are
    those of the species indices; their covalent radii are kept as a buffer (a converted model
    takes the file's own table).
    """

    def __init__(self, atomic_numbers: Sequence[int], q: float = 0.9183, p: float = 4.5791, a: float = 1.0805):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("q", torch.tensor(q, dtype=dtype))
        self.register_buffer("p", torch.tensor(p, dtype=dtype))
        self.register_buffer("a", torch.tensor(a, dtype=dtype))
        self.register_buffer("covalent_radius", covalent_radii(atomic_numbers))

    def forward(self, r: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """[E, 1] Å, species [n], edge_index [2, E] -> [E, 1] (dimensionless, in (0, 1])."""
        radius = self.covalent_radius.index_select(0, species)
        r_0 = 0.5 * (radius.index_select(0, edge_index[0]) + radius.index_select(0, edge_index[1]))
        u = r / r_0[:, None]
        return 1.0 / (1.0 + self.a * u**self.q / (1.0 + u ** (self.q - self.p)))


DISTANCE_TRANSFORMS = (None, "agnesi")


class RadialEmbedding(nn.Module):
    """Bessel basis times the cutoff envelope: [n_edges, 1] Å -> [n_edges, num_basis].

    With ``distance_transform="agnesi"`` the basis takes the transformed distance
    (`AgnesiTransform`, which needs the ``atomic_numbers`` of the species) and the envelope
    the raw one, as in mace-torch. ``apply_cutoff=False`` leaves the envelope out of the
    embedding (`cutoff` gives it apart).
    """

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_power: int = 5, distance_transform: str | None = None,
                 atomic_numbers: Sequence[int] | None = None, apply_cutoff: bool = True):
        super().__init__()
        self.apply_cutoff = bool(apply_cutoff)
        if distance_transform not in DISTANCE_TRANSFORMS:
            raise ValueError(f"distance_transform must be one of {DISTANCE_TRANSFORMS}, got {distance_transform!r}")
        if distance_transform is not None and atomic_numbers is None:
            raise ValueError(f"distance_transform={distance_transform!r} needs the atomic_numbers of the species")
        self.basis = BesselBasis(r_max, num_basis)
        self.cutoff = PolynomialCutoff(r_max, cutoff_power)
        self.transform = AgnesiTransform(atomic_numbers) if distance_transform == "agnesi" else None
        self.out_dim = num_basis

    def forward(self, r: torch.Tensor, species: torch.Tensor | None = None,
                edge_index: torch.Tensor | None = None) -> torch.Tensor:
        """[E, 1] Å (species [n] and edge_index [2, E] for a distance transform) -> [E, num_basis]
        (without the envelope where ``apply_cutoff`` is off: the blocks then apply it to their
        radial weights, as mace-torch's ``apply_cutoff=False``)."""
        x = r if self.transform is None else self.transform(r, species, edge_index)
        return self.basis(x) * self.cutoff(r) if self.apply_cutoff else self.basis(x)


class NormalizedSiLU(nn.Module):
    """SiLU rescaled to unit second moment for unit-normal input (as e3nn normalises activations)."""

    SCALE = 1.6790  # 1 / sqrt(E[silu(x)^2]), x ~ N(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SCALE * nn.functional.silu(x)


class RadialMLP(nn.Module):
    """MLP without biases, so that a radial embedding of zero (r >= r_max) maps to zero weights.

    Layers are variance-preserving at initialisation. Two parametrisations of the same function:
    ``fan_in_forward=False`` draws weights with std 1/sqrt(fan_in); ``True`` draws them N(0, 1) and
    divides by sqrt(fan_in) in the forward (e3nn's ``FullyConnectedNet``, which mace-torch uses).
    They train differently: Adam's step is about lr per weight in either, so the first moves the
    layer's function sqrt(fan_in) times faster than the second.

    ``layer_norm=True`` is the other radial MLP of mace-torch (its non-linear interaction blocks,
    after ESEN): each layer with a bias, then LayerNorm and a plain SiLU on the hidden layers,
    torch's default initialisation (``fan_in_forward`` does not apply).
    """

    def __init__(self, sizes: Sequence[int], fan_in_forward: bool = False, layer_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        self.fan_in_forward = fan_in_forward and not layer_norm
        self.layer_norm = layer_norm
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(n_in, n_out, bias=layer_norm)
            if not layer_norm:
                nn.init.normal_(linear.weight, std=1.0 if fan_in_forward else 1.0 / math.sqrt(n_in))
            layers.append(linear)
            if k < len(sizes) - 2:
                layers += [nn.LayerNorm(n_out), nn.SiLU()] if layer_norm else [NormalizedSiLU()]
        self.net = nn.Sequential(*layers)

    def _weight(self, layer: nn.Linear, rows: torch.Tensor | None = None) -> torch.Tensor:
        weight = layer.weight if rows is None else layer.weight.index_select(0, rows)
        return weight / math.sqrt(layer.in_features) if self.fan_in_forward else weight

    def forward(self, x: torch.Tensor, output_order: torch.Tensor | None = None) -> torch.Tensor:
        """[E, sizes[0]] -> [E, sizes[-1]]; ``output_order`` permutes the output columns (through
        the last layer's weight rows, so no [E, sizes[-1]] copy is made)."""
        *hidden, last = self.net
        for layer in hidden:
            x = nn.functional.linear(x, self._weight(layer), layer.bias) if isinstance(layer, nn.Linear) else layer(x)
        bias = last.bias if last.bias is None or output_order is None else last.bias.index_select(0, output_order)
        return nn.functional.linear(x, self._weight(last, output_order), bias)


class SplineRadial(nn.Module):
    """Radial weights as learned cubic B-splines of the distance, times the cutoff envelope.

    ``R(r)[c] = f_cut(r) Σ_k B_k(r) W[k, c]`` with ``num_basis`` B-splines on a uniform
    knot grid over [0, r_max]; twice continuously differentiable in r, so forces are
    continuous and force training can differentiate them again.

    Args:
        r_max: cutoff, Å.
        num_basis: spline coefficients per output channel (at least 4).
        out_features: number of radial weights per edge.
        cutoff_power: p of the polynomial envelope.
        backend: ``"auto"`` (Triton on CUDA), ``"torch"`` or ``"triton"``.
    """

    def __init__(self, r_max: float, num_basis: int, out_features: int, cutoff_power: int = 5, backend: str = "auto"):
        super().__init__()
        knot_spacing(num_basis, r_max)  # checks num_basis
        self.r_max, self.backend = float(r_max), backend
        self.weights = nn.Parameter(torch.randn(num_basis, out_features))
        self.cutoff = PolynomialCutoff(r_max, cutoff_power)

    def forward(self, r: torch.Tensor, output_order: torch.Tensor | None = None) -> torch.Tensor:
        """[E] or [E, 1] distances (Å) -> [E, out_features]; ``output_order`` permutes the
        output columns (through the coefficient columns, as `RadialMLP` does)."""
        r = r.reshape(-1)
        weights = self.weights if output_order is None else self.weights.index_select(1, output_order)
        return spline_contract(r, weights, self.r_max, self.backend) * self.cutoff(r)[:, None]
