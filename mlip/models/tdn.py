"""TDN: an interaction network whose tensor products are low-rank CP decompositions.

Tensor Decomposition Networks (Lin et al., 2025) replace each Clebsch-Gordan tensor
product of an equivariant backbone by a rank-R CANDECOMP/PARAFAC decomposition of its
CG tensor (three dense contractions, `mlip.nn.tensor_product.cp`), optionally with one
weight per channel shared by all paths (path-weight sharing). Equivariance becomes
approximate, with an error bounded by the decomposition's fit error
(`cp.equivariance_bound`). ``cp_rank="full"`` is exact.

As the paper does, we plug the layer into an existing backbone: ours, the MACE
interaction/product/readout stack (`mlip.models.mace.MACE`), whose edge tensor
products (Eq. 8) become CP products. The symmetric contraction (Eq. 10) stays as it is
(``correlation=1`` makes the product block a linear map).
`mlip-eval ... audit=equivariance` reports the equivariance error of a trained model
beside its accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlip.models.mace import MACE


class TDN(MACE):
    """MACE backbone with CP-decomposed edge tensor products.

    Args:
        cp_rank: rank of each CP decomposition (per path without sharing), or ``"full"``.
        cp_share_paths: path-weight sharing (one radial weight per channel for all paths).
        cp_learn_factors: train the factor matrices (initialised from the fit; the
            equivariance error then follows the trained factors) instead of fixing them.
        others: as `MACE` (``radial_fan_in_forward`` and the ``contraction_*`` options choose how
            the weights are parametrised, not the function).
    """

    def __init__(
        self,
        num_elements: int,
        avg_num_neighbors: float,
        r_max: float = 5.0,
        num_bessel: int = 8,
        cutoff_power: int = 5,
        max_ell: int = 2,
        hidden_irreps: str = "32x0e+32x1o",
        correlation: int = 2,
        num_interactions: int = 2,
        radial_mlp: Sequence[int] = (64, 64),
        readout_mlp: int = 16,
        cp_rank: int | str = 32,
        cp_share_paths: bool = True,
        cp_learn_factors: bool = False,
        radial_fan_in_forward: bool = False,
        contraction_normalization: str = "norm",
        contraction_parametrization: str = "orthonormal",
    ):
        super().__init__(
            num_elements, avg_num_neighbors, r_max, num_bessel, cutoff_power, max_ell, hidden_irreps, correlation,
            num_interactions, radial_mlp, readout_mlp, tp_backend="cp", cp_rank=cp_rank, cp_share_paths=cp_share_paths,
            cp_learn_factors=cp_learn_factors, radial_fan_in_forward=radial_fan_in_forward,
            contraction_normalization=contraction_normalization, contraction_parametrization=contraction_parametrization,
        )
