#!/usr/bin/env python
"""How many structures per second reach the batches, from each reader and from the store?

    python scripts/benchmark_data.py --data-dir ../shared/datasets            # CPU, readers and store
    python scripts/benchmark_data.py --data-dir samples --train-step --device cuda

For every sample format the same structures go (a) from the file through the reader,
graph building (vesin neighbour list, r = 5 Å) and collation (`StreamingDataset`), and
(b) from a store written by `write_store` at random through `StoreDataset`, each with
0 and N DataLoader workers (start-up included, over a few thousand structures); the table gives structures/s and the store/reader ratio.
With ``--train-step`` it also times an optimiser step (energy + forces loss, Adam) of
a MACE model on store batches, and the store loader's batches/s beside it: the store
keeps the model fed when it delivers more batches per second than the model consumes.
Then the collation alone: `batch_graphs` (what the loaders use) against torch_geometric's
``Batch.from_data_list`` on the same graphs (ten 3BPA molecules, and 16 OC20 slabs), the
per-batch host time a training step waits for when the loader has no workers.
All figures come from one process, one after another.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from mlip.data.loader import GraphLoader

from mlip.data.samplers import EpochShuffleSampler
from mlip.data.store import StoreDataset, write_store
from mlip.data.streaming import StreamingDataset

SAMPLES = {  # label: (path under --data-dir, reader format)
    "extxyz (3BPA)": ("3bpa/train_300K.xyz", "extxyz"),
    "oc20_lmdb (OC20)": ("oc20_style/c3h8_cu_relax_s2ef.lmdb", "oc20_lmdb"),
    "aselmdb (OC20)": ("oc20_style/c3h8_cu_relax.aselmdb", "aselmdb"),
    "ase_db (OC22)": ("oc22_style/oxides.db", "ase_db"),
    "mptrj (JSON)": ("mptrj_style/oxides_mptrj_layout.json", "mptrj"),
}
CUTOFF = 5.0
BATCH = 16


def rate(loader_factory, passes: int) -> float:
    """Structures per second over ``passes`` passes (worker start-up included once)."""
    loader = loader_factory()
    count, start = 0, time.perf_counter()
    for epoch in range(passes):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            count += batch.num_graphs
    return count / (time.perf_counter() - start)


def reader_rate(path: Path, format: str, workers: int, passes: int) -> float:
    dataset = StreamingDataset([path] * passes, CUTOFF, format)
    return rate(lambda: GraphLoader(dataset, batch_size=BATCH, num_workers=workers), 1)


def store_rate(store: Path, workers: int, passes: int) -> float:
    dataset = StoreDataset(store, CUTOFF)
    sampler = EpochShuffleSampler(len(dataset), seed=0)
    return rate(
        lambda: GraphLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, persistent_workers=workers > 0),
        passes,
    )


def train_step_ms(store: Path, device: str, steps: int) -> tuple[float, int]:
    """Mean ms per optimiser step of a MACE on store batches already on the device; atoms per batch."""
    from mlip.models.potential import Potential
    from mlip.models.registry import build_model
    from mlip.training.loss import EnergyForcesStressLoss

    dataset = StoreDataset(store, CUTOFF)
    stats = dataset.statistics()
    spec = {
        "target": "mlip.models.mace.MACE",
        "kwargs": dict(num_elements=len(stats.elements), avg_num_neighbors=stats.avg_num_neighbors, r_max=CUTOFF,
                       num_bessel=8, max_ell=3, hidden_irreps="128x0e+128x1o", correlation=3, num_interactions=2,
                       radial_mlp=[64, 64, 64], readout_mlp=16),
    }
    torch.set_default_dtype(torch.float32)
    potential = Potential(build_model(spec), stats.elements, stats.e0s, stats.scale, stats.shift, model_spec=spec).to(device)
    optimiser = torch.optim.Adam(potential.parameters(), lr=1e-3)
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=0.0)
    batches = [b.to(device) for _, b in zip(range(8), GraphLoader(dataset, batch_size=BATCH, shuffle=True))]

    def step(batch):
        optimiser.zero_grad(set_to_none=True)
        loss, _ = loss_fn(potential(batch, compute_stress=False, create_graph=True), batch)
        loss.backward()
        optimiser.step()

    for batch in batches[:3]:
        step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(steps):
        step(batches[k % len(batches)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps, int(sum(b.num_nodes for b in batches) / len(batches))


def collate_ms(graphs: list, repeats: int = 300) -> tuple[float, float]:
    """Milliseconds per batch: (batch_graphs, Batch.from_data_list) on ``graphs``."""
    from torch_geometric.data import Batch

    from mlip.data.loader import batch_graphs

    times = []
    for collate in (batch_graphs, Batch.from_data_list):
        for _ in range(20):
            collate(graphs)
        start = time.perf_counter()
        for _ in range(repeats):
            collate(graphs)
        times.append(1000 * (time.perf_counter() - start) / repeats)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--structures", type=int, default=5000, help="structures per measurement (passes repeat the sample)")
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for label, (relative, format) in SAMPLES.items():
            path = args.data_dir / relative
            if not path.exists():
                print(f"skipping {label}: {path} not found")
                continue
            stores[label] = Path(tmp) / format
            write_store(path, stores[label], cutoff=CUTOFF, shard_size=64, format=format)
            passes = max(1, -(-args.structures // len(StoreDataset(stores[label], None))))
            for workers in (0, args.workers):
                reader = reader_rate(path, format, workers, passes)
                store = store_rate(stores[label], workers, passes)
                results[f"{label}, {workers} workers"] = {"reader": reader, "store": store}
                rows.append(f"| {label} | {workers} | {reader:9.0f} | {store:9.0f} | {store / reader:5.1f} |")
        print(f"\nstructures/s into batches of {BATCH} (r = {CUTOFF} Å), about {args.structures} structures each")
        print("| data | workers | reader | store | store/reader |\n|---|---|---|---|---|")
        print("\n".join(rows))
        if args.train_step:
            label = "oc20_lmdb (OC20)"
            ms, atoms = train_step_ms(stores[label], args.device, args.steps)
            passes = max(1, -(-args.structures // len(StoreDataset(stores[label], None))))
            feed = store_rate(stores[label], args.workers, passes) / BATCH
            results["train_step"] = {"ms_per_step": ms, "atoms_per_batch": atoms, "store_batches_per_s": feed}
            print(f"\nMACE 128x0e+128x1o, l<=3, nu=3, float32 on {args.device}: {ms:.1f} ms per E+F training step "
                  f"({BATCH} OC20 slabs, {atoms} atoms) = {1000 / ms:.1f} steps/s; the store delivers "
                  f"{feed:.1f} batches/s with {args.workers} workers ({feed * ms / 1000:.1f}x what the step consumes)")
    from mlip.data.graph import structure_to_graph
    from mlip.data.readers import read_structures

    print("\n| collation of | batch_graphs ms | Batch.from_data_list ms | ratio |\n|---|---|---|---|")
    for label, count in (("extxyz (3BPA)", 10), ("oc20_lmdb (OC20)", BATCH)):
        relative, format = SAMPLES[label]
        if (args.data_dir / relative).exists():
            structures = read_structures(args.data_dir / relative, format=format)[:count]
            ours, theirs = collate_ms([structure_to_graph(s, CUTOFF) for s in structures])
            results[f"collate {label}"] = {"batch_graphs_ms": ours, "from_data_list_ms": theirs}
            print(f"| {count} x {label} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
