"""Short-range pair repulsion added to a learned energy: the universal ZBL screened nuclear
repulsion (Ziegler, Biersack and Littmark 1985), as mace-torch's foundation models use it.

Per edge i <- j, with a = 0.4543 · 0.529 Å / (Z_i^0.3 + Z_j^0.3) and x = r / a:

    V_ij = 14.3996 eV·Å · Z_i Z_j / r · Σ_k c_k exp(-d_k x) · f(r / (r_cov(Z_i) + r_cov(Z_j)))

with (c, d) = (0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016) and f
the polynomial envelope of power p (zero beyond the sum of the covalent radii). Each
directed edge carries half of V_ij to its receiver, so each pair counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mlip.nn.radial import covalent_radii, polynomial_envelope
from mlip.nn.scatter import scatter_sum

PAIR_REPULSIONS = (None, "zbl")
COULOMB = 14.3996  # e²/(4π ε0), eV·Å
BOHR = 0.529  # Å, as in ZBL's screening length
SCREENING = ((0.1818, 3.2), (0.5099, 0.9423), (0.2802, 0.4028), (0.02817, 0.2016))


class ZBLRepulsion(nn.Module):
    """ZBL repulsion per node (eV) of the species of ``atomic_numbers``.

    Args:
        atomic_numbers: atomic number of each species index.
        p: power of the polynomial envelope (mace-torch: its ``num_polynomial_cutoff``).
    """

    def __init__(self, atomic_numbers: Sequence[int], p: int = 6):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.p = int(p)
        self.register_buffer("z", torch.tensor([float(z) for z in atomic_numbers], dtype=dtype))
        self.register_buffer("covalent_radius", covalent_radii(atomic_numbers))
        self.register_buffer("a_exponent", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """species [n], edge_index [2, E] (sender, receiver), lengths [E] Å -> node energies [n] eV."""
        sender, receiver = edge_index
        z, radius = self.z.index_select(0, species), self.covalent_radius.index_select(0, species)
        z_j, z_i = z.index_select(0, sender), z.index_select(0, receiver)
        a = self.a_prefactor * BOHR / (z_j**self.a_exponent + z_i**self.a_exponent)
        x = lengths / a
        screening = sum(c * torch.exp(-d * x) for c, d in SCREENING)
        reach = radius.index_select(0, sender) + radius.index_select(0, receiver)
        pair = COULOMB * z_i * z_j / lengths * screening * polynomial_envelope(lengths, reach, self.p)
        return scatter_sum(0.5 * pair, receiver, species.shape[0])


def build_pair_repulsion(spec: dict[str, Any] | None, atomic_numbers: Sequence[int]) -> ZBLRepulsion | None:
    """The pair repulsion a model spec names (``{"kind": "zbl", "p": 6, "scaled": ...}``), or None."""
    if spec is None:
        return None
    if spec.get("kind") != "zbl":
        raise ValueError(f"pair_repulsion must be one of {PAIR_REPULSIONS}, got {spec.get('kind')!r}")
    return ZBLRepulsion(atomic_numbers, int(spec.get("p", 6)))
