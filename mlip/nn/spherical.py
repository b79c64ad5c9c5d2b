"""Irreps features as functions on the sphere, sampled on a quadrature grid and back.

A channel of ``0e + 1o + 2e + ...`` features (coefficients ``c_lm``) is the function

    f(x) = Σ_lm c_lm Y_lm(x),   x ∈ S²,

with e3nn's real spherical harmonics normalised to ``∫ Y_lm Y_l'm' dΩ = δ``, so that
rotating the features by e3nn's Wigner matrices rotates ``f``. Sampling ``f`` at grid
points is `to_grid`; `from_grid` integrates against the harmonics,
``c_lm = Σ_g w_g f(x_g) Y_lm(x_g)``.

The grid is a product rule: Gauss-Legendre nodes in cos θ times equally spaced φ.
With n nodes in θ and 2n in φ it integrates every polynomial of degree ≤ 2n - 1 on
the sphere exactly, so `from_grid(to_grid(c))` is exact for band limits L ≤ n - 1,
and a product of two functions of band limits L1, L2 projected onto degrees ≤ L3 is
exact (the Gaunt coefficients) for L1 + L2 + L3 ≤ 2n - 1. Anything non-polynomial
done on the grid (an activation) leaves the band limit; what the projection then
loses or aliases is the grid's equivariance error, which falls as n grows.

Only irreps of natural parity (``0e, 1o, 2e, 3o, ...``) are functions on the sphere:
``f(-x) = Σ (-1)^l c_lm Y_lm(x)``. Pseudo-tensors (``1e``, ``0o``) are refused.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import o3
from torch import nn


def natural_parity_ls(irreps: o3.Irreps) -> list[int]:
    """The degrees of ``irreps`` (one channel's worth), or a clear error for pseudo-tensors."""
    irreps = o3.Irreps(irreps)
    wrong = [str(ir) for _, ir in irreps if ir.p != (-1) ** ir.l]
    if wrong:
        raise ValueError(f"irreps {irreps}: {', '.join(wrong)} are not functions on the sphere "
                         "(spherical-grid layers take natural parity only: 0e, 1o, 2e, 3o, ...)")
    return [ir.l for _, ir in irreps]


def grid_size_for_degree(degree: int) -> int:
    """Gauss-Legendre nodes in θ for a product grid exact up to polynomial ``degree``."""
    return max(1, math.ceil((degree + 1) / 2))


def product_grid(n_theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points [G, 3] on the unit sphere and quadrature weights [G] (summing to 4π),
    G = n_theta × 2 n_theta; exact for polynomials of degree ≤ 2 n_theta - 1."""
    cos_theta, w_theta = np.polynomial.legendre.leggauss(n_theta)
    n_phi = 2 * n_theta
    phi = 2 * np.pi * (np.arange(n_phi) + 0.5) / n_phi
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    points = np.stack([
        np.outer(sin_theta, np.cos(phi)), np.outer(sin_theta, np.sin(phi)), np.outer(cos_theta, np.ones(n_phi)),
    ], axis=-1).reshape(-1, 3)
    weights = np.outer(w_theta, np.full(n_phi, 2 * np.pi / n_phi)).reshape(-1)
    return torch.from_numpy(points), torch.from_numpy(weights)


class SphericalGrid(nn.Module):
    """Sampling per-channel irreps features on a product grid, and projecting back.

    Args:
        irreps: one channel's irreps, natural parity (e.g. ``0e+1o+2e``); features are in
            the per-channel layout ``[..., Σ(2l+1)]`` (`mlip.nn.irreps.ChannelLayout`).
        resolution: Gauss-Legendre nodes in θ (the grid has ``2 resolution²`` points), or
            None for the smallest grid exact for ``degree``.
        degree: the polynomial degree the default grid integrates exactly (default
            ``2 L``: `from_grid(to_grid(·))` and linear maps on the grid exact).
        irreps_out: the irreps `from_grid` projects onto (default ``irreps``).
    """

    def __init__(self, irreps: o3.Irreps, resolution: int | None = None, degree: int | None = None,
                 irreps_out: o3.Irreps | None = None):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps)
        self.irreps_out = o3.Irreps(irreps_out) if irreps_out is not None else self.irreps_in
        ls_in, ls_out = natural_parity_ls(self.irreps_in), natural_parity_ls(self.irreps_out)
        if degree is None:
            degree = 2 * max(ls_in + ls_out)
        self.resolution = int(resolution) if resolution is not None else grid_size_for_degree(degree)
        self.exact_degree = 2 * self.resolution - 1
        points, weights = product_grid(self.resolution)
        dtype = torch.get_default_dtype()
        harmonics = lambda ls: torch.cat(  # noqa: E731  [G, Σ(2l+1)] in the irreps' own order
            [o3.spherical_harmonics(l, points, normalize=True, normalization="integral") for l in ls], dim=-1)
        self.register_buffer("points", points.to(dtype), persistent=False)
        self.register_buffer("sample", harmonics(ls_in).T.contiguous().to(dtype), persistent=False)  # [D_in, G]
        self.register_buffer("project", (harmonics(ls_out) * weights[:, None]).contiguous().to(dtype),
                             persistent=False)  # [G, D_out]

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    def to_grid(self, coefficients: torch.Tensor) -> torch.Tensor:
        """[..., D_in] coefficients -> [..., G] function values at the grid points."""
        return coefficients @ self.sample

    def from_grid(self, values: torch.Tensor) -> torch.Tensor:
        """[..., G] function values -> [..., D_out] coefficients (quadrature of f Y_lm)."""
        return values @ self.project
