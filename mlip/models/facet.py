"""Facet: steerable message passing made cheap (Miklaucic et al., arXiv 2509.08418, 2025).

Two changes to a NequIP/MACE-style network:
- the radial weights of each edge are learned cubic splines of the distance, times the
  cutoff envelope, instead of an MLP of a radial basis (`mlip.nn.radial.SplineRadial`,
  one fused kernel on the GPU);
- nodes are updated by an ordinary MLP applied pointwise on a spherical grid
  (`mlip.nn.grid_mlp.SphericalGridMLP`), instead of iterated tensor products or gates.

Per layer t, with Y the edge harmonics (ℓ ≤ max_ell) and R^t the spline weights:

    m_i     = W_m (1/avg_num_neighbors) Σ_j R^t(r_ij) Y(r̂_ij) ⊗ (W_up h_j)     message, ℓ ≤ message_ell
    h_i^t+1 = W_s h_i + GridMLP(m_i)         (W_s per element with element_skip)    node update
    E_i    += readout_t(h_i^t+1)                                               invariant readout

The message keeps every degree of the harmonics (as MACE's atomic basis A does); the
grid MLP samples it, acts pointwise, and projects onto the hidden degrees, so its
activation turns products of the message's degrees into hidden features (the role of
MACE's symmetric contraction). The convolution is the shared `InteractionBlock` (any
``tp_backend``, including the Gaunt ``grid`` product); the readouts are MACE's. Hidden
irreps must have natural parity (``0e+1o+2e...``): they are functions on the sphere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from mlip.nn.blocks import ElementLinear, InteractionBlock, LinearReadout, NodeEmbedding, NonLinearReadout
from mlip.nn.grid_mlp import SphericalGridMLP
from mlip.nn.spherical import natural_parity_ls


class Facet(nn.Module):
    """Facet energy model.

    Args:
        num_elements: number of chemical elements (species indices 0..num_elements-1).
        avg_num_neighbors: mean neighbours per atom in the training set (normalises the message sum).
        r_max: cutoff radius, Å.
        spline_basis: cubic B-spline coefficients per radial weight (uniform knots on [0, r_max]).
        cutoff_power: p of the polynomial cutoff envelope.
        max_ell: highest degree of the edge spherical harmonics.
        hidden_irreps: node features, one multiplicity, natural parity (e.g. ``"64x0e+64x1o+64x2e"``).
        num_interactions: number of message-passing layers.
        grid_hidden: hidden width of the grid MLPs, or a list of widths for several hidden layers.
        grid_resolution: Gauss-Legendre nodes in θ of the node-update grid (``2 n²`` points);
            None: the smallest grid on which a linear update is exact (max_ell + ℓ_hidden).
        readout_mlp: hidden size of the last layer's non-linear readout.
        tp_backend: the convolution's backend: "auto", "e3nn", "cueq" or "grid".
        conv_grid_resolution: with tp_backend "grid", its grid (None: exact for the product).
        message_ell: highest degree of the messages (None: max_ell); lower is cheaper, and
            the message then carries less of the neighbours' angular structure.
        element_skip: the self-connection's weights depend on the node's element (``W_{z_i} h_i``,
            as MACE's residual); False: one linear map for all elements.
        grid_backend: the grid MLPs' hidden layer: ``"torch"``, or ``"auto"`` / ``"triton"`` for
            the fused kernel on CUDA (`mlip.nn.kernels.grid_activation`; one hidden layer).
    """

    def __init__(
        self,
        num_elements: int,
        avg_num_neighbors: float,
        r_max: float = 5.0,
        spline_basis: int = 16,
        cutoff_power: int = 5,
        max_ell: int = 3,
        hidden_irreps: str = "32x0e+32x1o",
        num_interactions: int = 2,
        grid_hidden: int | Sequence[int] = 64,
        grid_resolution: int | None = 6,
        readout_mlp: int = 16,
        tp_backend: str = "auto",
        conv_grid_resolution: int | None = None,
        message_ell: int | None = None,
        element_skip: bool = False,
        grid_backend: str = "torch",
    ):
        super().__init__()
        self.r_max = float(r_max)
        self.element_skip = element_skip
        hidden = o3.Irreps(hidden_irreps)
        natural_parity_ls(hidden)  # a clear error for pseudo-tensors
        num_channels = hidden[0].mul
        irreps_sh = o3.Irreps.spherical_harmonics(max_ell)
        scalars = o3.Irreps(f"{num_channels}x0e")

        self.embedding = NodeEmbedding(num_elements, scalars)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
        self.interactions, self.self_connections = nn.ModuleList(), nn.ModuleList()
        self.updates, self.readouts = nn.ModuleList(), nn.ModuleList()
        message_ell = max_ell if message_ell is None else message_ell
        irreps_message = o3.Irreps([(num_channels, (l, (-1) ** l)) for l in range(message_ell + 1)])
        irreps_node = scalars
        for t in range(num_interactions):
            last = t == num_interactions - 1
            self.interactions.append(InteractionBlock(
                irreps_node, irreps_sh, irreps_message, 0, (), avg_num_neighbors, tp_backend,
                spline_basis=spline_basis, r_max=r_max, cutoff_power=cutoff_power, grid_resolution=conv_grid_resolution,
            ))
            self.self_connections.append(
                ElementLinear(irreps_node, hidden, num_elements) if element_skip else o3.Linear(irreps_node, hidden)
            )
            self.updates.append(SphericalGridMLP(irreps_message, grid_hidden, grid_resolution, irreps_out=hidden,
                                                 backend=grid_backend))
            self.readouts.append(NonLinearReadout(hidden, readout_mlp) if last else LinearReadout(hidden))
            irreps_node = hidden

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Per-node energies [n_nodes] (dimensionless) from species [n_nodes] and edge vectors [n_edges, 3] Å."""
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1, keepdim=True)
        edge_sh = self.spherical_harmonics(edge_vectors)
        node_feats = self.embedding(species)
        node_energy = torch.zeros_like(node_feats[:, 0])
        for interaction, self_connection, update, readout in zip(
            self.interactions, self.self_connections, self.updates, self.readouts
        ):
            message = interaction(node_feats, edge_sh, lengths, edge_index)  # spline-weighted convolution
            skip = self_connection(node_feats, species) if self.element_skip else self_connection(node_feats)
            node_feats = skip + update(message)  # the grid MLP
            node_energy = node_energy + readout(node_feats)
        return node_energy
