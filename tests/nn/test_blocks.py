"""Each MACE block on its own is equivariant (float64, random rotations with and without inversion)."""

import pytest
import torch
from e3nn import o3

from mlip.nn.blocks import InteractionBlock, LinearReadout, NodeEmbedding, NonLinearReadout, ProductBlock
from mlip.nn.radial import RadialEmbedding

IRREPS_NODE = o3.Irreps("3x0e+3x1o")
IRREPS_SH = o3.Irreps("0e+1o+2e")
IRREPS_BASIS = o3.Irreps("3x0e+3x1o+3x2e")


def _rotations():
    torch.manual_seed(7)
    R = o3.rand_matrix()
    return [R, -R]  # proper and improper


def _close(a, b, what):
    err = (a - b).abs().max() / b.abs().max().clamp(min=1e-300)
    assert err < 1e-10, f"{what}: relative equivariance error {err:.2e}"


def test_interaction_block_is_equivariant():
    torch.manual_seed(0)
    n, n_edges = 6, 20
    block = InteractionBlock(IRREPS_NODE, IRREPS_SH, IRREPS_BASIS, 6, [8], avg_num_neighbors=3.0)
    radial = RadialEmbedding(r_max=4.0, num_basis=6)
    node_feats, vectors = torch.randn(n, IRREPS_NODE.dim), torch.randn(n_edges, 3)
    edge_index = torch.randint(0, n, (2, n_edges))

    def run(h, v):
        sh = o3.spherical_harmonics(IRREPS_SH, v, normalize=True, normalization="component")
        return block(h, sh, radial(v.norm(dim=1, keepdim=True)), edge_index)

    out = run(node_feats, vectors)
    for R in _rotations():
        rotated = run(node_feats @ IRREPS_NODE.D_from_matrix(R).T, vectors @ R.T)
        _close(rotated, out @ IRREPS_BASIS.D_from_matrix(R).T, "interaction")


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_product_block_is_equivariant(correlation):
    torch.manual_seed(correlation)
    block = ProductBlock(IRREPS_BASIS, IRREPS_NODE, IRREPS_NODE, correlation, num_elements=3)
    basis, node_feats, species = torch.randn(5, IRREPS_BASIS.dim), torch.randn(5, IRREPS_NODE.dim), torch.tensor([0, 2, 1, 1, 0])
    out = block(basis, node_feats, species)
    assert out.abs().max() > 1e-3
    for R in _rotations():
        rotated = block(basis @ IRREPS_BASIS.D_from_matrix(R).T, node_feats @ IRREPS_NODE.D_from_matrix(R).T, species)
        _close(rotated, out @ IRREPS_NODE.D_from_matrix(R).T, f"product nu={correlation}")


def test_readouts_and_embedding_are_invariant():
    torch.manual_seed(3)
    node_feats = torch.randn(4, IRREPS_NODE.dim)
    embedding = NodeEmbedding(3, o3.Irreps("3x0e"))
    assert embedding(torch.tensor([0, 1, 2])).shape == (3, 3)
    for readout in (LinearReadout(IRREPS_NODE), NonLinearReadout(o3.Irreps("3x0e"), hidden=4)):
        feats = node_feats if isinstance(readout, LinearReadout) else node_feats[:, :3]
        irreps = IRREPS_NODE if isinstance(readout, LinearReadout) else o3.Irreps("3x0e")
        out = readout(feats)
        for R in _rotations():
            _close(readout(feats @ irreps.D_from_matrix(R).T), out, type(readout).__name__)
