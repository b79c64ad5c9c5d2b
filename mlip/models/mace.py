"""MACE: higher-order equivariant message passing (Batatia et al., NeurIPS 2022).

Per layer t: interaction (Eqs. 8-9) -> symmetric product of order ν with an
element-dependent residual (Eqs. 10-11) -> readout (Eqs. 12-13). The per-node
energy is the sum of the readouts of all layers, in units of the dataset's
energy scale (`Potential` applies scale, shift and E0s).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from mlip.nn.blocks import (
    InteractionBlock,
    LinearReadout,
    NodeEmbedding,
    NonLinearInteractionBlock,
    NonLinearReadout,
    ProductBlock,
)
from mlip.nn.radial import RadialEmbedding

INTERACTIONS = ("standard", "density", "nonlinear")


class MACE(nn.Module):
    """MACE energy model.

    Args:
        num_elements: number of chemical elements (species indices 0..num_elements-1).
        avg_num_neighbors: mean neighbours per atom in the training set (normalises Eq. 8's sum).
        r_max: cutoff radius, Å.
        num_bessel: size of the Bessel radial basis.
        cutoff_power: p of the polynomial cutoff envelope.
        max_ell: highest degree of the edge spherical harmonics and of the atomic basis A.
        hidden_irreps: node features between layers, e.g. ``"32x0e+32x1o"`` (one multiplicity).
        correlation: ν, the body order of the symmetric product minus one; or one ν per layer.
        num_interactions: number of message-passing layers T.
        radial_mlp: hidden sizes of the radial MLP.
        readout_mlp: hidden size of the last layer's non-linear readout.
        tp_backend: tensor-product backend of the interactions: "auto", "e3nn" or "cueq"
            (see `mlip.nn.tensor_product`; the weights are the same for all), "cp" for
            CP-decomposed convolutions (`mlip.models.tdn.TDN`) or "grid" for the Gaunt product
            on a sphere grid (the contraction then runs "auto").
        cp_rank: with "cp", the rank of each decomposition, or "full" (exact).
        cp_share_paths: with "cp", one radial weight per channel for all paths (path-weight sharing).
        cp_learn_factors: with "cp", train the CP factor matrices (from the fit) instead of fixing them.
        residual_first: the first layer's update adds the element-dependent residual of the
            embedding (Eq. 11); False is mace-torch's ``RealAgnosticInteractionBlock`` first:
            no residual, and the atomic basis A mapped by an element-dependent linear instead.
        radial_fan_in_forward: the radial MLP divides its weights by sqrt(fan-in) in the forward,
            as mace-torch's does, instead of at initialisation (`RadialMLP`; same function,
            slower and width-independent training of the radial weights).
        contraction_normalization: ``"norm"`` or ``"component"`` (mace-torch's): the symmetric
            product's basis normalised over all of its components, or per component
            (`SymmetricContraction`; ℓ > 0 outputs sqrt(2ℓ+1) larger, and their weights learn so).
        contraction_parametrization: ``"orthonormal"`` or ``"coupling"`` (mace-torch's): the
            symmetric product's weights learned on our orthonormal basis, or on every
            Clebsch-Gordan coupling chain (`SymmetricContraction`; same functions).
        interaction: ``"standard"`` (messages divided by avg_num_neighbors, Eq. 9) or
            ``"density"`` (by a learned local density: mace-torch's density blocks, as in
            MACE-MP-0b3, MPA-0 and OMAT-0; `InteractionBlock`); or one of them per layer.
        distance_transform: None or ``"agnesi"``: the radial basis of an Agnesi-transformed
            distance (`mlip.nn.radial.AgnesiTransform`; the envelope keeps the raw distance).
        atomic_numbers: the atomic number of each species index (needed by a distance transform;
            `mlip-train` fills it in from the training set).
        num_heads: readouts per node (mace-torch's multi-head models); the forward returns the
            head held in the ``head`` buffer (`Potential.select_head` sets it).
        edge_irreps: the features sent along edges, apart from ``hidden_irreps`` (mace-torch's
            ``edge_irreps``: ``linear_up`` maps to them; None: the node features);
            ``edge_irreps_first_scalars``: the first layer sends only their scalars
            (mace-torch's ``use_edge_irreps_first``).
        agnostic_product: the symmetric product's weights shared by all elements.
        apply_cutoff: the envelope multiplies the radial embedding (True), or the radial weights
            and densities each block makes from it (False: mace-torch's ``apply_cutoff=False``).

    ``interaction="nonlinear"`` is mace-torch's non-linear residual block (MACE-MH-1:
    `NonLinearInteractionBlock`), with a plain linear residual in the product.

    Pair repulsion (ZBL) is an option of the `Potential`, for every model family.
    """

    def __init__(
        self,
        num_elements: int,
        avg_num_neighbors: float,
        r_max: float = 5.0,
        num_bessel: int = 8,
        cutoff_power: int = 5,
        max_ell: int = 3,
        hidden_irreps: str = "32x0e+32x1o",
        correlation: int | Sequence[int] = 3,
        num_interactions: int = 2,
        radial_mlp: Sequence[int] = (64, 64, 64),
        readout_mlp: int = 16,
        tp_backend: str = "auto",
        cp_rank: int | str = "full",
        cp_share_paths: bool = False,
        cp_learn_factors: bool = False,
        residual_first: bool = True,
        radial_fan_in_forward: bool = False,
        contraction_normalization: str = "norm",
        contraction_parametrization: str = "orthonormal",
        interaction: str | Sequence[str] = "standard",
        distance_transform: str | None = None,
        atomic_numbers: Sequence[int] | None = None,
        num_heads: int = 1,
        edge_irreps: str | None = None,
        edge_irreps_first_scalars: bool = False,
        agnostic_product: bool = False,
        apply_cutoff: bool = True,
    ):
        super().__init__()
        kinds = [interaction] * num_interactions if isinstance(interaction, str) else list(interaction)
        if len(kinds) != num_interactions or any(kind not in INTERACTIONS for kind in kinds):
            raise ValueError(f"interaction must be one of {INTERACTIONS} or one per layer, got {interaction!r}")
        if "nonlinear" in kinds and tp_backend in ("cp", "grid"):
            raise ValueError(f"interaction=nonlinear takes the channel-wise convolution (tp_backend auto, e3nn or cueq), "
                             f"not {tp_backend!r}")
        correlations = [correlation] * num_interactions if isinstance(correlation, int) else list(correlation)
        if len(correlations) != num_interactions:
            raise ValueError(f"correlation: {len(correlations)} values for {num_interactions} interactions")
        self.r_max = float(r_max)
        self.num_heads = int(num_heads)
        if self.num_heads > 1:
            self.register_buffer("head", torch.zeros(1, dtype=torch.long))
        hidden = o3.Irreps(hidden_irreps)
        num_channels = hidden[0].mul
        irreps_sh = o3.Irreps.spherical_harmonics(max_ell)
        irreps_basis = o3.Irreps([(num_channels, ir) for _, ir in irreps_sh])  # A: k x (0e+1o+...)
        scalars = o3.Irreps(f"{num_channels}x0e")

        self.embedding = NodeEmbedding(num_elements, scalars)
        self.radial_embedding = RadialEmbedding(r_max, num_bessel, cutoff_power, distance_transform, atomic_numbers,
                                                apply_cutoff)
        edge = None if edge_irreps is None else o3.Irreps(edge_irreps)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.readouts = nn.ModuleList()
        irreps_node = scalars
        for t in range(num_interactions):
            last = t == num_interactions - 1
            irreps_out = scalars if last else hidden  # only invariants are read after the last layer
            residual = residual_first or t > 0 or kinds[t] == "nonlinear"  # the non-linear block is residual
            layer_edge = edge
            if t == 0 and edge is not None:
                layer_edge = o3.Irreps(f"{edge.count(o3.Irrep('0e'))}x0e") if edge_irreps_first_scalars else None
            if kinds[t] == "nonlinear":
                interaction_block = NonLinearInteractionBlock(
                    irreps_node, irreps_sh, irreps_basis, num_bessel, radial_mlp, num_elements, tp_backend, layer_edge)
            else:
                interaction_block = InteractionBlock(
                    irreps_node, irreps_sh, irreps_basis, num_bessel, radial_mlp, avg_num_neighbors, tp_backend,
                    cp_rank, cp_share_paths, cp_learn_factors, element_out=0 if residual else num_elements,
                    radial_fan_in_forward=radial_fan_in_forward, density_normalization=kinds[t] == "density",
                    irreps_edge=layer_edge,
                )
            self.interactions.append(interaction_block)
            contraction_backend = "auto" if tp_backend in ("cp", "grid") else tp_backend
            self.products.append(
                ProductBlock(
                    irreps_basis, irreps_node, irreps_out, correlations[t], num_elements, contraction_backend, residual,
                    contraction_normalization, contraction_parametrization,
                    skip="linear" if kinds[t] == "nonlinear" else "element", agnostic=agnostic_product,
                )
            )
            self.readouts.append(NonLinearReadout(irreps_out, readout_mlp, self.num_heads) if last
                                 else LinearReadout(irreps_out, self.num_heads))
            irreps_node = irreps_out

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                node_heads: torch.Tensor | None = None) -> torch.Tensor:
        """Per-node energies [n_nodes] (dimensionless) from species [n_nodes] and edge vectors [n_edges, 3] Å;
        with several heads, of the head in the ``head`` buffer, or of each node's ``node_heads`` [n_nodes]."""
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1, keepdim=True)
        edge_radial = self.radial_embedding(lengths, species, edge_index)
        edge_cutoff = None if self.radial_embedding.apply_cutoff else self.radial_embedding.cutoff(lengths)
        edge_sh = self.spherical_harmonics(edge_vectors)
        node_feats = self.embedding(species)
        node_energy = torch.zeros_like(node_feats[:, 0])
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            basis = interaction(node_feats, edge_sh, edge_radial, edge_index, species, edge_cutoff)
            node_feats = product(basis, node_feats, species)
            energies = readout(node_feats)  # [n], or [n, num_heads]
            if self.num_heads > 1:
                energies = (energies.index_select(1, self.head)[:, 0] if node_heads is None
                            else energies.gather(1, node_heads[:, None])[:, 0])
            node_energy = node_energy + energies
        return node_energy
