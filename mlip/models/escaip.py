"""EScAIP: multi-head self-attention over each atom's neighbour tokens (Qu & Krishnapriyan, arXiv 2410.24169, 2024).

Instead of tensor products, EScAIP scales through attention: every edge (i <- j) is a token
of atom i, and the atom's K tokens attend to each other on dense attention kernels. The
features are invariant scalars plus the raw direction of each edge, so the model is not
equivariant by construction (it learns rotations from the data; `mlip-eval
audit=equivariance` reports its error).

Input block (per edge ij, r_ij = x_j - x_i, u = r_ij / r, f the cutoff envelope):

    a_i   = embedding(z_i)
    x_ij  = MLP_in[a_i, a_j, W_r B(r_ij) f(r_ij), W_d Y(u_ij)]                  neighbour token
    q_ilm = (1/avg_num_neighbors) Σ_j f(r_ij) Y_lm(u_ij),  b_il = Σ_m q_ilm²      bond-orientational order
    h_i   = MLP_node[a_i, b_i]                                                   node feature

Graph attention block t, on atom i's tokens in K slots (nearest first, `mlip.nn.neighbour_slots`):

    x_ij += W_s^t h_i + W_n^t h_j                       the pair's node features
    x_ij += Attention^t(x_i·)_j                         multi-head self-attention among i's tokens
    x_ij += FFN^t(x_ij)
    h_i  += FFN_node^t((1/avg_num_neighbors) Σ_j f(r_ij) x_ij)                  aggregation

Readout over layers (the paper reads every block's features):

    ε_i  = MLP_E[h_i^1, ..., h_i^T]                                               node energy
    F_i  = Σ_j f(r_ij) MLP_F[x_ij^1, ..., x_ij^T] u_ij                            direct forces

With ``direct_forces=True`` the model returns (ε, F) and `Potential` uses F as the forces: the
paper's fast mode, not the gradient of any energy (non-conservative). Otherwise forces and stress
are derivatives of Σ ε, as for every model here.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from mlip.nn.attention import FeedForward, NeighbourAttention
from mlip.nn.neighbour_slots import gather_slots, neighbour_slots
from mlip.nn.radial import BesselBasis, polynomial_envelope
from mlip.nn.scatter import scatter_sum


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.SiLU(), nn.Linear(hidden, width_out))


class GraphAttentionBlock(nn.Module):
    """One EScAIP block: node context into the tokens, attention among them, FFN, aggregation into the node."""

    def __init__(self, channels: int, heads: int, ffn_hidden: int, avg_num_neighbors: float):
        super().__init__()
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.self_context = nn.Linear(channels, channels, bias=False)
        self.neighbour_context = nn.Linear(channels, channels, bias=False)
        self.attention = NeighbourAttention(channels, heads)
        self.token_ffn = FeedForward(channels, ffn_hidden)
        self.node_ffn = FeedForward(channels, ffn_hidden)

    def forward(self, tokens: torch.Tensor, nodes: torch.Tensor, senders: torch.Tensor, envelope: torch.Tensor,
                math_kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [n, K, C], nodes [n, C], senders [n, K] (node of each slot), envelope [n, K]."""
        n, slots = senders.shape
        neighbours = self.neighbour_context(nodes).index_select(0, senders.reshape(-1)).view(n, slots, -1)
        tokens = tokens + self.self_context(nodes)[:, None, :] + neighbours
        tokens = tokens + self.attention(tokens, envelope, math_kernel)
        tokens = tokens + self.token_ffn(tokens)
        aggregated = (envelope[..., None] * tokens).sum(1) / self.avg_num_neighbors
        return tokens, nodes + self.node_ffn(aggregated)


class EScAIP(nn.Module):
    """EScAIP energy model (and direct forces).

    Args:
        num_elements: number of chemical elements (species indices 0..num_elements-1).
        avg_num_neighbors: mean neighbours per atom in the training set (normalises the sums over neighbours).
        r_max: cutoff radius, Å.
        num_bessel: Bessel functions of the distance.
        cutoff_power: p of the polynomial cutoff envelope.
        channels: width C of tokens and node features.
        heads: attention heads (C a multiple of it).
        num_layers: graph attention blocks.
        max_neighbors: token slots K per atom; an atom with more neighbours keeps its K nearest
            (the energy is then not smooth where two of them swap rank): choose K at least the
            largest neighbour count within r_max of your structures.
        direction_ell: highest degree of the spherical harmonics of the edge direction (tokens and
            bond-orientational order).
        ffn_hidden: hidden width of the feed-forward layers (None: 2C).
        readout_mlp: hidden width of the energy and force readouts.
        direct_forces: also return forces from the tokens (non-conservative; see the module docstring).
    """

    def __init__(
        self,
        num_elements: int,
        avg_num_neighbors: float,
        r_max: float = 5.0,
        num_bessel: int = 8,
        cutoff_power: int = 5,
        channels: int = 64,
        heads: int = 4,
        num_layers: int = 2,
        max_neighbors: int = 64,
        direction_ell: int = 3,
        ffn_hidden: int | None = None,
        readout_mlp: int = 64,
        direct_forces: bool = False,
    ):
        super().__init__()
        self.r_max = float(r_max)
        self.cutoff_power = int(cutoff_power)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.max_neighbors = int(max_neighbors)
        self.direct_forces = bool(direct_forces)
        self.receptive_shells = num_layers + 1  # the input block's bond order reads one shell, each block one more
        ffn_hidden = 2 * channels if ffn_hidden is None else ffn_hidden
        self.direction_ells = list(range(direction_ell + 1))
        num_harmonics = (direction_ell + 1) ** 2
        # input block
        self.embedding = nn.Embedding(num_elements, channels)
        self.radial_basis = BesselBasis(r_max, num_bessel)
        self.radial = nn.Linear(num_bessel, channels, bias=False)
        self.direction = nn.Linear(num_harmonics, channels, bias=False)
        self.token_in = _mlp(4 * channels, channels, channels)
        self.node_in = _mlp(channels + direction_ell + 1, channels, channels)
        # graph attention blocks
        self.blocks = nn.ModuleList(
            GraphAttentionBlock(channels, heads, ffn_hidden, avg_num_neighbors) for _ in range(num_layers)
        )
        # readouts over every block's features
        self.energy_readout = nn.Sequential(nn.LayerNorm(num_layers * channels), _mlp(num_layers * channels, readout_mlp, 1))
        self.force_readout = (
            nn.Sequential(nn.LayerNorm(num_layers * channels), _mlp(num_layers * channels, readout_mlp, 1))
            if direct_forces else None
        )

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-node energies [n] (dimensionless) from species [n] and edge vectors r_ij [E, 3] Å;
        with ``direct_forces``, also forces [n, 3] in the same units per Å."""
        sender, receiver = edge_index
        num_nodes = species.shape[0]
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
        unit = edge_vectors / lengths[:, None]
        envelope = polynomial_envelope(lengths, self.r_max, self.cutoff_power)  # [E]
        harmonics = o3.spherical_harmonics(self.direction_ells, unit, normalize=False, normalization="component")

        # input block: neighbour tokens and node features (module docstring)
        atoms = self.embedding(species)
        radial = self.radial(self.radial_basis(lengths[:, None]) * envelope[:, None])
        edge_tokens = self.token_in(torch.cat([
            atoms.index_select(0, receiver), atoms.index_select(0, sender), radial, self.direction(harmonics)], dim=-1))
        order = scatter_sum(envelope[:, None] * harmonics, receiver, num_nodes) / self.avg_num_neighbors
        ends = [l * l for l in self.direction_ells] + [harmonics.shape[1]]
        bond_order = torch.stack([order[:, a:b].pow(2).sum(-1) for a, b in zip(ends[:-1], ends[1:])], dim=-1)
        nodes = self.node_in(torch.cat([atoms, bond_order], dim=-1))

        # each atom's edges in K slots, nearest first (padded slots: envelope 0, sender 0)
        table = neighbour_slots(receiver, lengths, num_nodes, self.max_neighbors)
        tokens = gather_slots(edge_tokens, table)
        slot_envelope = gather_slots(envelope, table)
        senders = gather_slots(sender, table)
        # fused attention kernels have no double backward: training through a derivative of the energy
        # (forces by autograd, or the stress of either mode) takes the math kernel
        math_kernel = self.training and torch.is_grad_enabled() and edge_vectors.requires_grad

        node_layers, token_layers = [], []
        for block in self.blocks:
            tokens, nodes = block(tokens, nodes, senders, slot_envelope, math_kernel)
            node_layers.append(nodes)
            token_layers.append(tokens)
        node_energy = self.energy_readout(torch.cat(node_layers, dim=-1)).squeeze(-1)
        if self.force_readout is None:
            return node_energy
        magnitude = self.force_readout(torch.cat(token_layers, dim=-1)).squeeze(-1) * slot_envelope  # [n, K]
        forces = (magnitude[..., None] * gather_slots(unit, table)).sum(1)
        return node_energy, forces
