import math

import torch

from mlip.nn.radial import BesselBasis, PolynomialCutoff, RadialEmbedding, RadialMLP


def test_bessel_basis_by_hand():
    r = torch.tensor([[1.3]])
    values = BesselBasis(r_max=5.0, num_basis=3)(r)
    expected = [math.sqrt(2 / 5) * math.sin(n * math.pi * 1.3 / 5) / 1.3 for n in (1, 2, 3)]
    assert torch.allclose(values, torch.tensor([expected]), atol=1e-14)


def test_cutoff_and_its_derivatives_vanish_at_r_max():
    cutoff = PolynomialCutoff(r_max=4.0, p=5)
    r = torch.tensor([4.0 - 1e-9, 4.0, 4.5], requires_grad=True)
    f = cutoff(r)
    (df,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (d2f,) = torch.autograd.grad(df.sum(), r)
    assert torch.all(f.abs() < 1e-12) and torch.all(df.abs() < 1e-9) and torch.all(d2f.abs() < 1e-6)
    assert cutoff(torch.tensor([0.0])).item() == 1.0


def test_radial_weights_are_rotation_invariant_and_vanish_beyond_cutoff():
    torch.manual_seed(0)
    embedding, mlp = RadialEmbedding(r_max=4.0, num_basis=6), RadialMLP([6, 8, 5])
    vectors = torch.randn(10, 3) * 2
    rotation = torch.linalg.qr(torch.randn(3, 3))[0]
    weights = mlp(embedding(vectors.norm(dim=1, keepdim=True)))
    rotated = mlp(embedding((vectors @ rotation.T).norm(dim=1, keepdim=True)))
    assert torch.allclose(weights, rotated, rtol=1e-12, atol=1e-14)
    far = mlp(embedding(torch.tensor([[4.0], [5.0]])))
    assert torch.all(far == 0)


def test_radial_mlp_emits_its_columns_in_a_given_order():
    torch.manual_seed(0)
    mlp = RadialMLP([8, 16, 12])
    x = torch.randn(5, 8, requires_grad=True)
    order = torch.randperm(12)
    torch.testing.assert_close(mlp(x, order), mlp(x)[:, order], rtol=1e-14, atol=1e-14)


def test_fan_in_forward_is_the_same_function_under_another_parametrisation():
    torch.manual_seed(0)
    scaled_at_init = RadialMLP([8, 16, 12])
    scaled_in_forward = RadialMLP([8, 16, 12], fan_in_forward=True)
    with torch.no_grad():  # the same function: weights times sqrt(fan_in)
        for a, b in zip(scaled_at_init.net, scaled_in_forward.net):
            if isinstance(a, torch.nn.Linear):
                b.weight.copy_(a.weight * math.sqrt(a.in_features))
    x = torch.randn(5, 8, dtype=torch.float64)
    scaled_at_init.double(), scaled_in_forward.double()
    order = torch.randperm(12)
    torch.testing.assert_close(scaled_in_forward(x, order), scaled_at_init(x, order), rtol=1e-12, atol=1e-12)
    # ... which trains differently: the gradient of a weight is 1/sqrt(fan_in) times smaller
    scaled_in_forward(x).sum().backward()
    scaled_at_init(x).sum().backward()
    last_a, last_b = scaled_at_init.net[-1], scaled_in_forward.net[-1]
    torch.testing.assert_close(last_b.weight.grad * math.sqrt(16), last_a.weight.grad, rtol=1e-10, atol=1e-12)
    # initial weights are N(0, 1): the layer's output keeps unit variance either way
    wide = RadialMLP([256, 4], fan_in_forward=True)
    assert 0.9 < float(wide.net[0].weight.detach().std()) < 1.1
