"""MACE building blocks (Batatia et al., NeurIPS 2022), one class per equation.

Shapes use e3nn's layout: node features ``[n_nodes, irreps.dim]``, edge spherical
harmonics ``[n_edges, sh_irreps.dim]``, radial embedding ``[n_edges, num_basis]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from mlip.nn.radial import NormalizedSiLU, RadialMLP, SplineRadial
from mlip.nn.scatter import scatter_sum
from mlip.nn.symmetric_contraction import SymmetricContraction
from mlip.nn.tensor_product import ChannelwiseConvolution
from mlip.nn.tensor_product.cp import CPConvolution
from mlip.nn.tensor_product.grid import GridConvolution


class NodeEmbedding(nn.Module):
    """Eq. 7: ``h^(0)_{i,k00} = Σ_z W_{kz} δ_{z z_i}``: species [n] -> [n, irreps_out.dim] scalars."""

    def __init__(self, num_elements: int, irreps_out: o3.Irreps):
        super().__init__()
        self.num_elements = num_elements
        self.linear = o3.Linear(o3.Irreps(f"{num_elements}x0e"), o3.Irreps(irreps_out))

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(species, self.num_elements).to(self.linear.weight.dtype)
        return self.linear(one_hot)


class ElementLinear(o3.FullyConnectedTensorProduct):
    """``W_{z_i} h_i``: an equivariant linear map whose weights depend on the node's element.

    [n, irreps_in.dim], species [n] -> [n, irreps_out.dim]; the product with the one-hot
    element vector (MACE's element-dependent residual, Eq. 11).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, num_elements: int):
        super().__init__(o3.Irreps(irreps_in), o3.Irreps(f"{num_elements}x0e"), o3.Irreps(irreps_out))
        self.num_elements = num_elements

    def forward(self, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(species, self.num_elements).to(node_feats.dtype)
        return super().forward(node_feats, one_hot)


def local_density(
    density: nn.Module, edge_input: torch.Tensor, receiver: torch.Tensor, n: int, edge_cutoff: torch.Tensor | None
) -> torch.Tensor:
    """mace-torch's local density of each node, ``Σ_j tanh(ρ(x_ij)²)`` (times the envelope where
    the radial embedding left it out): ``density`` ρ maps [E, d] edge inputs to [E, 1]; -> [n, 1]."""
    edge_density = torch.tanh(density(edge_input).square())
    if edge_cutoff is not None:
        edge_density = edge_density * edge_cutoff
    return scatter_sum(edge_density, receiver, n)


class InteractionBlock(nn.Module):
    """Eqs. 8-9: the atomic basis ``A_i`` from neighbour features, radial weights and edge harmonics.

        A_{i,klm} = W_A · (1/avg_num_neighbors) Σ_j R_k(r_ij) Y(r̂_ij) ⊗ (W_up h_j)

    The tensor product is channel-wise ('uvu'): each channel of ``h_j`` couples with the
    harmonics under its own radial weight per path (or, with ``tp_backend="cp"`` and
    ``cp_share_paths``, one weight for all paths), in the form ``tp_backend`` picks
    (``grid``: the Gaunt product, `mlip.nn.tensor_product.grid`).

    The radial weights R come from an MLP of the radial embedding (MACE), or with
    ``spline_basis`` > 0 from learned splines of the distance (Facet; ``edge_radial`` is
    then the edge lengths [E, 1], Å).

    With ``element_out`` > 0 (mace-torch's non-residual ``RealAgnosticInteractionBlock``),
    ``A_i`` is mapped once more by ``W_{z_i}``, an `ElementLinear` over that many elements.

    With ``density_normalization`` (mace-torch's ``RealAgnosticDensity(Residual)InteractionBlock``)
    the sum over neighbours is divided by a learned local density instead of avg_num_neighbors:

        A_i = W_A Σ_j (...) / (1 + Σ_j tanh(ρ(r_ij)²)),   ρ = a one-layer map of the radial embedding
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        num_radial: int,
        radial_mlp: Sequence[int],
        avg_num_neighbors: float,
        tp_backend: str = "auto",
        cp_rank: int | str = "full",
        cp_share_paths: bool = False,
        cp_learn_factors: bool = False,
        spline_basis: int = 0,
        r_max: float = 0.0,
        cutoff_power: int = 5,
        grid_resolution: int | None = None,
        element_out: int = 0,
        radial_fan_in_forward: bool = False,
        density_normalization: bool = False,
        irreps_edge: o3.Irreps | None = None,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        # the features sent along edges: the node features, or (mace-torch's edge_irreps) others
        self.irreps_edge = self.irreps_in if irreps_edge is None else o3.Irreps(irreps_edge)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_edge)
        if tp_backend == "cp":  # TDN: the product in CP form, rank and path-weight sharing as given
            self.convolution = CPConvolution(
                self.irreps_edge, irreps_sh, self.irreps_out, cp_rank, cp_share_paths, learn_factors=cp_learn_factors
            )
        elif tp_backend == "grid":  # the Gaunt product on a sphere grid
            self.convolution = GridConvolution(self.irreps_edge, irreps_sh, self.irreps_out, grid_resolution)
        else:
            self.convolution = ChannelwiseConvolution(self.irreps_edge, irreps_sh, self.irreps_out, tp_backend)
        if spline_basis:  # Facet: the weights are splines of the distance itself
            self.radial = SplineRadial(r_max, spline_basis, self.convolution.weight_numel, cutoff_power)
        else:
            self.radial = RadialMLP([num_radial, *radial_mlp, self.convolution.weight_numel], radial_fan_in_forward)
        self.linear = o3.Linear(self.convolution.irreps_out, self.irreps_out)
        self.element_linear = ElementLinear(self.irreps_out, self.irreps_out, element_out) if element_out else None
        self.density = RadialMLP([num_radial, 1], radial_fan_in_forward) if density_normalization else None

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
        species: torch.Tensor | None = None,
        edge_cutoff: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``edge_cutoff`` [E, 1]: the envelope, where the radial embedding left it out."""
        sender, receiver = edge_index
        h = self.linear_up(node_feats)
        order = self.convolution.weight_order(h)  # the backend's column order, made by the radial net
        radial_weights = self.radial(edge_radial, order)  # [n_edges, weight_numel]
        if edge_cutoff is not None:
            radial_weights = radial_weights * edge_cutoff
        n = node_feats.shape[0]
        pooled = self.convolution(h, edge_sh, radial_weights, sender, receiver, n, order is not None)  # Eq. 8, summed
        if self.density is None:
            basis = self.linear(pooled / self.avg_num_neighbors)  # Eq. 9
        else:  # the local density in place of the average neighbour count
            basis = self.linear(pooled / (1.0 + local_density(self.density, edge_radial, receiver, n, edge_cutoff)))
        if self.element_linear is None:
            return basis
        return self.element_linear(basis, species)


class NonLinearInteractionBlock(nn.Module):
    """mace-torch's ``RealAgnosticResidualNonLinearInteractionBlock`` (MACE-MH-1): Eqs. 8-9 with
    the elements in the radial weights, a learned density normalisation, a residual and a gate.

        r_ij' = [radial(r_ij), W_s one_hot(z_j), W_t one_hot(z_i)]           (element embeddings)
        m_i   = W_1 Σ_j R(r_ij') Y(r̂_ij) ⊗ (W_up h_j) / (β Σ_j tanh(ρ(r_ij')²) + α) + W_res W_up h_i
        A_i   = W_2 gate(m_i)

    R and ρ are radial MLPs with biases and LayerNorm (`RadialMLP(layer_norm=True)`), α and β
    learned scalars (initially 20 and 0), the gate e3nn's: SiLU on the scalars, sigmoid gates on
    the rest. The residual to the next features is a plain linear map (`ProductBlock(skip="linear")`).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_out: o3.Irreps,
        num_radial: int,
        radial_mlp: Sequence[int],
        num_elements: int,
        tp_backend: str = "auto",
        irreps_edge: o3.Irreps | None = None,
        density_hidden: int = 64,
    ):
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.irreps_edge = self.irreps_in if irreps_edge is None else o3.Irreps(irreps_edge)
        self.num_elements = int(num_elements)
        num_scalars = self.irreps_in.count(o3.Irrep("0e"))
        elements = o3.Irreps(f"{num_elements}x0e")
        self.source_embedding = o3.Linear(elements, o3.Irreps(f"{num_scalars}x0e"))
        self.target_embedding = o3.Linear(elements, o3.Irreps(f"{num_scalars}x0e"))
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_edge)
        self.convolution = ChannelwiseConvolution(self.irreps_edge, irreps_sh, self.irreps_out, tp_backend)
        radial_in = num_radial + 2 * num_scalars
        self.radial = RadialMLP([radial_in, *radial_mlp, self.convolution.weight_numel], layer_norm=True)
        self.density = RadialMLP([radial_in, density_hidden, 1], layer_norm=True)
        self.alpha = nn.Parameter(torch.tensor(20.0))
        self.beta = nn.Parameter(torch.tensor(0.0))
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        gates = o3.Irreps([(mul, "0e") for mul, _ in gated])
        self.gate = Gate(scalars, [nn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated)
        self.linear_res = o3.Linear(self.irreps_edge, self.gate.irreps_in)
        self.linear_1 = o3.Linear(self.convolution.irreps_out, self.gate.irreps_in)
        self.linear_2 = o3.Linear(self.gate.irreps_out, self.irreps_out)

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
        species: torch.Tensor,
        edge_cutoff: torch.Tensor | None = None,
    ) -> torch.Tensor:
        sender, receiver = edge_index
        n = node_feats.shape[0]
        h = self.linear_up(node_feats)
        residual = self.linear_res(h)
        one_hot = nn.functional.one_hot(species, self.num_elements).to(node_feats.dtype)
        edge_in = torch.cat([edge_radial, self.source_embedding(one_hot).index_select(0, sender),
                             self.target_embedding(one_hot).index_select(0, receiver)], dim=-1)
        order = self.convolution.weight_order(h)
        radial_weights = self.radial(edge_in, order)
        if edge_cutoff is not None:
            radial_weights = radial_weights * edge_cutoff
        density = local_density(self.density, edge_in, receiver, n, edge_cutoff)  # [n, 1]
        pooled = self.convolution(h, edge_sh, radial_weights, sender, receiver, n, order is not None)
        message = self.linear_1(pooled) / (density * self.beta + self.alpha) + residual
        return self.linear_2(self.gate(message))


class ProductBlock(nn.Module):
    """Eqs. 10-11: ``h^(t+1) = W m(B(A)) + W_{z_i} h^(t)``.

    B is the element-dependent symmetric contraction of order ``correlation`` (``agnostic``:
    the same weights for every element, mace-torch's ``use_agnostic_product``); the residual is
    a linear map of the previous features whose weights depend on the element of the node
    (``skip="linear"``: the same for all, after mace-torch's non-linear blocks; ``residual=False``
    leaves it out: mace-torch's first layer after a non-residual interaction).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_node: o3.Irreps,
        irreps_out: o3.Irreps,
        correlation: int,
        num_elements: int,
        tp_backend: str = "auto",
        residual: bool = True,
        normalization: str = "norm",
        parametrization: str = "orthonormal",
        skip: str = "element",
        agnostic: bool = False,
    ):
        super().__init__()
        if skip not in ("element", "linear"):
            raise ValueError(f"skip must be 'element' or 'linear', got {skip!r}")
        irreps_out = o3.Irreps(irreps_out)
        num_channels = irreps_out[0].mul
        contraction_out = o3.Irreps([(num_channels, ir) for _, ir in irreps_out])
        self.agnostic = bool(agnostic)
        self.contraction = SymmetricContraction(
            irreps_in, contraction_out, correlation, 1 if agnostic else num_elements, tp_backend, normalization,
            parametrization,
        )
        self.linear = o3.Linear(contraction_out, irreps_out)
        if not residual:
            self.skip = None
        elif skip == "linear":
            self.skip = o3.Linear(o3.Irreps(irreps_node), irreps_out)
        else:
            self.skip = ElementLinear(irreps_node, irreps_out, num_elements)

    def forward(self, basis: torch.Tensor, node_feats: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        update = self.linear(self.contraction(basis, torch.zeros_like(species) if self.agnostic else species))
        if self.skip is None:
            return update
        return update + (self.skip(node_feats) if isinstance(self.skip, o3.Linear) else self.skip(node_feats, species))


class LinearReadout(nn.Module):
    """Eq. 12, layers t < T: a linear map of the invariant features to one energy per node
    ([n]; with ``num_heads`` > 1 one per head, [n, num_heads])."""

    def __init__(self, irreps_in: o3.Irreps, num_heads: int = 1):
        super().__init__()
        self.num_heads = int(num_heads)
        self.linear = o3.Linear(o3.Irreps(irreps_in), o3.Irreps(f"{self.num_heads}x0e"))

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        out = self.linear(node_feats)
        return out.squeeze(-1) if self.num_heads == 1 else out

    def head_state(self, sources: list[int]) -> dict[str, torch.Tensor]:
        """The state of this readout with ``len(sources)`` heads, head h a copy of head ``sources[h]``
        (the fan-in, the input width, is the same for any number of heads)."""
        weight = self.linear.weight.detach().view(-1, self.num_heads)
        return {"linear.weight": weight[:, sources].reshape(-1).clone()}


class NonLinearReadout(nn.Module):
    """Eq. 13, last layer: a one-hidden-layer MLP on the invariant features.

    With ``num_heads`` > 1 (mace-torch's multi-head models) each head owns a block of ``hidden``
    units: head h's energy reads only block h of the activations, [n, num_heads].
    """

    def __init__(self, irreps_in: o3.Irreps, hidden: int = 16, num_heads: int = 1):
        super().__init__()
        self.num_heads = int(num_heads)
        width = hidden * self.num_heads
        self.linear_in = o3.Linear(o3.Irreps(irreps_in), o3.Irreps(f"{width}x0e"))
        self.activation = NormalizedSiLU()
        self.linear_out = o3.Linear(o3.Irreps(f"{width}x0e"), o3.Irreps(f"{self.num_heads}x0e"))
        if self.num_heads > 1:  # [width, heads]: unit h reaches head h only
            mask = torch.kron(torch.eye(self.num_heads), torch.ones(hidden, 1)).to(torch.get_default_dtype())
            self.register_buffer("head_mask", mask, persistent=False)

    def forward(self, node_feats: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.linear_in(node_feats))
        if self.num_heads == 1:
            return self.linear_out(hidden).squeeze(-1)
        weight = self.linear_out.weight.view(self.head_mask.shape) * self.head_mask
        return hidden @ weight / hidden.shape[-1] ** 0.5  # e3nn's Linear: 1/sqrt(fan-in)

    def head_state(self, sources: list[int]) -> dict[str, torch.Tensor]:
        """The state of this readout with ``len(sources)`` heads, head h a copy of head ``sources[h]``.
        The output layer's fan-in is ``hidden`` times the number of heads, so its weights scale
        by sqrt(new heads / old heads); units of one head reach no other."""
        hidden, heads = self.linear_out.weight.numel() // self.num_heads**2, len(sources)
        w_in = self.linear_in.weight.detach().view(-1, self.num_heads, hidden)
        w_out = self.linear_out.weight.detach().view(self.num_heads, hidden, self.num_heads)
        out = w_out.new_zeros(heads, hidden, heads)
        for h, s in enumerate(sources):
            out[h, :, h] = w_out[s, :, s] * (heads / self.num_heads) ** 0.5
        return {"linear_in.weight": w_in[:, sources].reshape(-1).clone(), "linear_out.weight": out.reshape(-1)}
