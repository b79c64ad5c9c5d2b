#!/usr/bin/env python
"""How do the tensor-product backends (e3nn, cuequivariance, CP, grid) scale with ℓ_max?

Tensor-product microbenchmark over ℓ_max: CG (e3nn), cuequivariance and CP at two ranks.

    python scripts/benchmark_tensor_product.py                       # GPU: 20000 edges, 32 channels
    python scripts/benchmark_tensor_product.py --device cpu --edges 2000 --lmax 1 2 3 4

One call is the channel-wise convolution of MACE Eq. 8 (gather from senders, tensor
product with the edge harmonics under per-edge radial weights, sum at receivers)
with ℓ ≤ ℓ_max everywhere, forward and backward (gradients of node features and
weights). CP rows use path-weight sharing (TDN's default) and report the fit error
of their decomposition (``--ranks 16 64 full``: ``full`` is the exact CP). Every row
reports its equivariance error, ‖f(Dx, Dy) − D f(x, y)‖ / ‖f(x, y)‖ for a random
rotation D in the benchmark's dtype (exact backends show that dtype's round-off);
memory is the peak GPU allocation of one call. The last table fits time ∝ ℓ_max^k
for ℓ_max ≥ 3. All rows come from this one process.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from e3nn import o3
from timing import cuda_ms

from mlip.nn.tensor_product import ChannelwiseConvolution
from mlip.nn.tensor_product.backend import CUEQ_CUDA_OPS
from mlip.nn.tensor_product.cp import CPConvolution
from mlip.nn.tensor_product.grid import GridConvolution


def irreps_up_to(lmax: int, channels: int) -> o3.Irreps:
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def layers(lmax: int, channels: int, ranks: list[str]) -> dict[str, torch.nn.Module]:
    args = (irreps_up_to(lmax, channels), o3.Irreps.spherical_harmonics(lmax), irreps_up_to(lmax, channels))
    out = {"e3nn": ChannelwiseConvolution(*args, backend="e3nn")}
    if torch.cuda.is_available() and CUEQ_CUDA_OPS:
        out["cueq"] = ChannelwiseConvolution(*args, backend="cueq")
    out["grid (Gaunt)"] = GridConvolution(*args)  # natural-parity paths only, l2-factored weights
    for rank in ranks:
        start = time.perf_counter()
        out[f"cp r={rank}"] = CPConvolution(*args, rank=rank if rank == "full" else int(rank), share_paths=True)
        out[f"cp r={rank}"].seconds = time.perf_counter() - start
    return out


def equivariance_error(layer, lmax: int, device: str, edges: int = 2000) -> float:
    """‖f(Dx, Dy, w) − D f(x, y, w)‖ / ‖f(x, y, w)‖ for one random rotation D, on random inputs."""
    layer = layer.to(device)
    nodes = max(edges // 20, 1)
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    rotation = o3.rand_matrix()
    irreps_sh = o3.Irreps.spherical_harmonics(lmax)
    x = torch.randn(nodes, layer.irreps_in.dim, generator=generator)
    y = o3.spherical_harmonics(irreps_sh, torch.randn(edges, 3, generator=generator), True)
    w = torch.randn(edges, layer.weight_numel, generator=generator)
    sender = torch.randint(0, nodes, (edges,), generator=generator).to(device)
    receiver = torch.randint(0, nodes, (edges,), generator=generator).to(device)
    D_in, D_sh, D_out = (irreps.D_from_matrix(rotation) for irreps in (layer.irreps_in, irreps_sh, layer.irreps_out))
    with torch.no_grad():
        out = layer(x.to(device), y.to(device), w.to(device), sender, receiver, nodes).cpu()
        rotated = layer((x @ D_in.T).to(device), (y @ D_sh.T).to(device), w.to(device), sender, receiver, nodes).cpu()
    return float(torch.linalg.vector_norm(rotated - out @ D_out.T) / torch.linalg.vector_norm(out))


def measure(layer, lmax: int, channels: int, edges: int, device: str, repeats: int) -> tuple[float, float]:
    """(ms per forward+backward, peak GB) of one call on random inputs."""
    layer = layer.to(device)
    nodes = max(edges // 20, 1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(nodes, layer.irreps_in.dim, generator=generator).to(device).requires_grad_(True)
    y = o3.spherical_harmonics(o3.Irreps.spherical_harmonics(lmax), torch.randn(edges, 3, generator=generator), True)
    y = y.to(device)
    w = torch.randn(edges, layer.weight_numel, generator=generator).to(device).requires_grad_(True)
    sender = torch.randint(0, nodes, (edges,), generator=generator).to(device)
    receiver = torch.randint(0, nodes, (edges,), generator=generator).to(device)

    def call():
        out = layer(x, y, w, sender, receiver, nodes)
        torch.autograd.grad(out.square().sum(), (x, w))

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(call, repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    return ms, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lmax", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--edges", type=int, default=20000)
    parser.add_argument("--ranks", nargs="+", default=["16", "64"], help="CP ranks, integers or 'full'")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_default_dtype(getattr(torch, args.dtype))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.edges} edges, {args.channels} channels, {args.dtype}")
    print("| ℓ_max | backend | ms fwd+bwd | peak GB | equivariance error | CP fit error | CP build s |")
    print("|---|---|---|---|---|---|---|")
    times: dict[str, list[tuple[int, float]]] = {}
    for lmax in args.lmax:
        for backend, layer in layers(lmax, args.channels, args.ranks).items():
            ms, peak = measure(layer, lmax, args.channels, args.edges, args.device, args.repeats)
            equivariance = equivariance_error(layer, lmax, args.device)
            fit = f"{max(layer.fit_errors):.2e}" if hasattr(layer, "fit_errors") else "exact"
            build = f"{layer.seconds:.1f}" if hasattr(layer, "seconds") else ""
            print(f"| {lmax} | {backend} | {ms:.2f} | {peak:.3f} | {equivariance:.1e} | {fit} | {build} |", flush=True)
            times.setdefault(backend, []).append((lmax, ms))
    print("\n| backend | time ∝ ℓ_max^k, k (ℓ_max ≥ 3) |\n|---|---|")
    for backend, points in times.items():
        points = [(l, ms) for l, ms in points if l >= 3]
        if len(points) >= 2:
            k = np.polyfit([math.log(l) for l, _ in points], [math.log(ms) for _, ms in points], 1)[0]
            print(f"| {backend} | {k:.2f} |")


if __name__ == "__main__":
    main()
