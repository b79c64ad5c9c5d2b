"""The CP edge step (`mlip.nn.kernels.cp_message`): twin against a dense reference, and derivatives."""

import pytest
import torch

from mlip.nn.kernels.cp_message import ToEdgesV, ToEdgesW, ToNodes, cp_messages


def problem(num_paths=3, seed=0, nodes=6, edges=15, channels=4, ranks=(2, 3, 1)):
    g = torch.Generator().manual_seed(seed)
    path = torch.cat([torch.full((k,), p, dtype=torch.long) for p, k in enumerate(ranks[:num_paths])])
    R = path.shape[0]
    u = torch.randn(nodes, channels, R, generator=g, requires_grad=True)
    v = torch.randn(edges, R, generator=g, requires_grad=True)
    w = torch.randn(edges, num_paths, channels, generator=g, requires_grad=True)
    sender = torch.randint(0, nodes, (edges,), generator=g)
    receiver = torch.randint(0, nodes, (edges,), generator=g)
    return u, v, w, path, sender, receiver, nodes


@pytest.mark.parametrize("num_paths", [1, 3])
def test_messages_equal_the_dense_sum(num_paths):
    u, v, w, path, sender, receiver, n = problem(num_paths)
    dense = torch.einsum("ecr,er,ecr->ecr", u[sender], v, w[:, path, :].transpose(1, 2))
    expected = torch.zeros(n, *u.shape[1:]).index_add(0, receiver, dense)
    torch.testing.assert_close(cp_messages(u, v, w, path, sender, receiver, n, "torch"), expected, rtol=1e-14, atol=1e-14)


def test_first_and_second_derivatives():
    u, v, w, path, sender, receiver, n = problem()

    def f(u, v, w):
        return cp_messages(u, v, w, path, sender, receiver, n, "torch")

    assert torch.autograd.gradcheck(f, (u, v, w))
    assert torch.autograd.gradgradcheck(f, (u, v, w))


def test_edge_primitives_have_their_own_derivatives():
    u, v, w, path, sender, receiver, n = problem()
    a = torch.randn_like(u, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, u, w: ToEdgesV.apply(a, u, w, path, receiver, sender, "torch"), (a, u, w))
    assert torch.autograd.gradgradcheck(lambda a, u, v: ToEdgesW.apply(a, u, v, path, receiver, sender, 3, "torch"), (a, u, v))
    assert torch.autograd.gradgradcheck(lambda u, v, w: ToNodes.apply(u, v, w, path, sender, receiver, n, "torch"), (u, v, w))
