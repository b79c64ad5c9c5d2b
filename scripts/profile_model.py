#!/usr/bin/env python
"""Where does the time of one model call go: its CUDA kernels, heaviest first, launches and GPU-busy time?

    python scripts/profile_model.py --case si1728 --backend cueq

Prints wall-clock ms per call, GPU-busy ms per call (the sum of kernel times) and
kernels launched per call, then the kernels that take the most time. Wall time far
above GPU-busy time means the call is bound by launches, not by the GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from benchmark import molecules, potential, silicon, training_step
from timing import cuda_ms
from torch.profiler import ProfilerActivity, profile
from torch_geometric.data import Batch

from mlip.models.cuda_graph import GraphedPotential


def make_call(case: str, backend: str, data_dir: Path):
    if case.startswith("si"):
        graph = silicon(3 if case.startswith("si216") else 6)
        model = potential([14], 6.0, "128x0e+128x1o", backend, graph.edge_index.shape[1] / graph.num_nodes)
        model = model.cuda().requires_grad_(False)
        batch = Batch.from_data_list([graph]).to("cuda")
        if case.endswith("graph"):
            graphed = GraphedPotential(model)
            return lambda: graphed(batch)
        return lambda: model(batch, compute_stress=True)
    graphs = molecules(data_dir)
    if graphs is None:
        raise SystemExit(f"{data_dir}/3bpa/train_300K.xyz not found (--data-dir)")
    return training_step(graphs, backend, cuda_graph=case.endswith("graph"))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["si216", "si1728", "si216-graph", "si1728-graph", "train", "train-graph"], default="si1728")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    args = parser.parse_args()
    torch.set_default_dtype(getattr(torch, args.dtype))
    call = make_call(args.case, args.backend, args.data_dir)
    wall = cuda_ms(call, args.calls)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1000 / args.calls
    print(f"{args.case} {args.backend} {args.dtype}: wall {wall:.2f} ms/call, GPU busy {busy:.2f} ms/call, "
          f"{len(kernels) / args.calls:.0f} kernels/call")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
