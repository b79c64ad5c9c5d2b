#!/usr/bin/env python
"""How fast is the spline radial kernel, against its torch twin, MACE's Bessel + MLP radial and the memory floor?

Spline radial layer: the Triton kernel against its torch twin and against MACE's Bessel + MLP radial.

    python scripts/benchmark_spline.py            # on the GPU machine

For E edges (1728 Si atoms x ~45 neighbours, and a larger batch) and C radial
weights per edge, times three uses, each in one process and in turn:
``forward`` (weights only), ``forces`` (forward + d/dr, inference, weights frozen) and ``training``
(forward, forces with create_graph, a loss on energy and forces, gradients to the
weights: the double backward of force training). Prints ms per call and ratios.
"""

from __future__ import annotations

import argparse

import torch
from timing import cuda_ms

from mlip.nn.radial import RadialEmbedding, RadialMLP, SplineRadial

R_MAX = 6.0


class BesselMLP(torch.nn.Module):
    """MACE's radial: 8 Bessel functions x envelope -> MLP [64, 64, 64] -> C weights."""

    def __init__(self, out_features: int):
        super().__init__()
        self.embedding = RadialEmbedding(R_MAX, 8, 5)
        self.mlp = RadialMLP([8, 64, 64, 64, out_features])

    def forward(self, r):
        return self.mlp(self.embedding(r[:, None]))


def timed(layer, r0: torch.Tensor, mode: str, repeats: int) -> float:
    layer.requires_grad_(mode == "training")  # inference freezes the weights, as MLIPCalculator does

    def call():
        r = r0.clone().requires_grad_(mode != "forward")
        radial = layer(r)
        energy = radial.square().sum()
        if mode == "forward":
            return
        (forces,) = torch.autograd.grad(energy, r, create_graph=mode == "training")
        if mode == "training":
            (energy + forces.square().sum()).backward()

    return cuda_ms(call, repeats)


def primitives(n_edges: int, channels: int, num_basis: int, repeats: int) -> None:
    """Each Triton primitive against the memory floor: the bytes it must move over the copy bandwidth."""
    from mlip.nn.kernels import spline as kernels

    big = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    bandwidth = 2 * big.numel() * 4 / (cuda_ms(lambda: big.clone(), repeats) / 1000)  # read + write, bytes/s
    print(f"\ncopy bandwidth {bandwidth / 1e12:.2f} TB/s; E = {n_edges}, C = {channels}, K = {num_basis}")
    print("| dtype | primitive | ms | floor ms | floor / ms |\n|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float64):
        r = 1.5 + (R_MAX - 1.5) * torch.rand(n_edges, device="cuda", dtype=dtype)
        w = torch.randn(num_basis, channels, device="cuda", dtype=dtype)
        g = torch.randn(n_edges, channels, device="cuda", dtype=dtype)
        h, item = kernels.knot_spacing(num_basis, R_MAX), torch.finfo(dtype).bits // 8
        cases = {
            "evaluate E_0": (lambda: kernels.evaluate_triton(r, w, h, 0), n_edges * (channels + 1)),
            "project P_1": (lambda: kernels.project_triton(r, w, g, h, 1), n_edges * (channels + 2)),
            "scatter S_0": (lambda: kernels.scatter_triton(r, g, h, 0, num_basis), n_edges * (channels + 1)),
        }
        for name, (fn, elements) in cases.items():
            ms, floor = cuda_ms(fn, repeats), 1000 * elements * item / bandwidth
            print(f"| {str(dtype)[6:]} | {name} | {ms:.3f} | {floor:.3f} | {floor / ms:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, nargs="+", default=[77_760, 622_080])
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--num-basis", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--primitives", action="store_true", help="also time each kernel against the memory floor")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, C = {args.channels} weights per edge, K = {args.num_basis} knots")
    print("| edges | dtype | mode | Bessel+MLP ms | spline torch ms | spline Triton ms | Triton vs MLP | Triton vs torch |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
        layers = {
            "mlp": BesselMLP(args.channels).cuda(),
            "torch": SplineRadial(R_MAX, args.num_basis, args.channels, backend="torch").cuda(),
            "triton": SplineRadial(R_MAX, args.num_basis, args.channels, backend="triton").cuda(),
        }
        for n_edges in args.edges:
            r = 1.5 + (R_MAX - 1.5) * torch.rand(n_edges, device="cuda")
            for mode in ("forward", "forces", "training"):
                ms = {name: timed(layer, r, mode, args.repeats) for name, layer in layers.items()}
                print(f"| {n_edges} | {str(dtype)[6:]} | {mode} | {ms['mlp']:.2f} | {ms['torch']:.2f} | {ms['triton']:.2f} "
                      f"| {ms['mlp'] / ms['triton']:.1f}x | {ms['torch'] / ms['triton']:.1f}x |")
    if args.primitives:
        primitives(args.edges[0], args.channels, args.num_basis, args.repeats)


if __name__ == "__main__":
    main()
