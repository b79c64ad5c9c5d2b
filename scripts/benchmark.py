#!/usr/bin/env python
"""Model-level speed: energy+forces+stress calls on diamond Si and a training step on 3BPA.

    python scripts/benchmark.py --data-dir ../shared/datasets        # on the GPU machine

Inference: a MACE of MACE-MP "medium" size (128x0e+128x1o, ℓ ≤ 3, correlation 3,
2 layers, r_max 6 Å) on rattled diamond Si of 216 and 1728 atoms (~45 neighbours per
atom): ms per energy+forces+stress call, atom-steps per second, peak GPU memory.
Training: ms per Adam step (energy + forces loss) on 32 3BPA molecules with a
128x0e+128x1o+128x2e model, r_max 5 Å. Every tensor-product backend and float32 /
float64, one table, all in this process (compare rows of one run only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from timing import cuda_ms
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers import read_structures
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.training.loss import EnergyForcesStressLoss


def potential(elements: list[int], r_max: float, hidden: str, backend: str, avg_num_neighbors: float) -> Potential:
    spec = {
        "target": "mlip.models.mace.MACE",
        "kwargs": dict(num_elements=len(elements), avg_num_neighbors=avg_num_neighbors, r_max=r_max, num_bessel=8,
                       max_ell=3, hidden_irreps=hidden, correlation=3, num_interactions=2, radial_mlp=[64, 64, 64],
                       readout_mlp=16, tp_backend=backend),
    }
    torch.manual_seed(0)
    return Potential(build_model(spec), elements, [0.0] * len(elements), 1.0, 0.0, model_spec=spec)


def silicon(repeat: int, seed: int = 0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((repeat,) * 3)
    atoms.positions += 0.05 * np.random.default_rng(seed).standard_normal(atoms.positions.shape)
    return structure_to_graph(structure_from_atoms(atoms, f"Si{len(atoms)}"), 6.0)


def inference_row(graph, backend: str, dtype: torch.dtype, repeats: int) -> str:
    torch.set_default_dtype(dtype)
    model = potential([14], 6.0, "128x0e+128x1o", backend, graph.edge_index.shape[1] / graph.num_nodes)
    model = model.cuda().requires_grad_(False)
    batch = Batch.from_data_list([graph]).to("cuda")
    torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(lambda: model(batch, compute_stress=True), repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    return f"| Si {graph.num_nodes} E+F+S | {backend} | {str(dtype)[6:]} | {ms:.2f} | {graph.num_nodes / ms * 1000:,.0f} | {peak:.2f} |"


def training_row(graphs, backend: str, dtype: torch.dtype, repeats: int) -> str:
    torch.set_default_dtype(dtype)
    elements = sorted({int(z) for g in graphs for z in g.atomic_numbers})
    n_edges = sum(g.edge_index.shape[1] for g in graphs) / sum(g.num_nodes for g in graphs)
    model = potential(elements, 5.0, "128x0e+128x1o+128x2e", backend, n_edges).cuda()
    batch = Batch.from_data_list(graphs).to("cuda")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=0.0)

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(batch, create_graph=True), batch)
        loss.backward()
        optimiser.step()

    torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(step, repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    atoms = batch.num_nodes
    return f"| train step, 32 3BPA ({atoms} atoms) | {backend} | {str(dtype)[6:]} | {ms:.2f} | {atoms / ms * 1000:,.0f} | {peak:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--backends", nargs="+", default=["e3nn", "cueq"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| case | backend | dtype | ms | atom-steps/s | peak GB |\n|---|---|---|---|---|---|")
    systems = [silicon(3), silicon(6)]
    molecules = None
    path = args.data_dir / "3bpa" / "train_300K.xyz"
    if path.is_file():
        molecules = [structure_to_graph(s, 5.0) for s in read_structures(path, stress_key=None, virial_key=None)[:32]]
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for backend in args.backends:
            for graph in systems:
                print(inference_row(graph, backend, dtype, args.repeats), flush=True)
            if molecules is not None:
                print(training_row(molecules, backend, dtype, args.repeats), flush=True)


if __name__ == "__main__":
    main()
