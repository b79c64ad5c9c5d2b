#!/usr/bin/env python
"""How fast is a model call (energy, forces, stress) and a training step on one GPU, against mace-torch?

Model-level speed: energy+forces+stress calls on diamond Si and a training step on 3BPA.

    python scripts/benchmark.py --data-dir ../shared/datasets        # on the GPU machine

Inference: a MACE of MACE-MP "medium" size (128x0e+128x1o, ℓ ≤ 3, correlation 3,
2 layers, r_max 6 Å) on rattled diamond Si of 216 and 1728 atoms (~45 neighbours per
atom): ms per energy+forces+stress call, eager and replayed from a CUDA graph
(`GraphedPotential`), atom-steps per second, peak GPU memory. Training: ms per Adam
step (energy + forces loss) on 32 3BPA molecules with a 128x0e+128x1o+128x2e model,
r_max 5 Å, eager and with the loss and gradients replayed from a CUDA graph
(`GraphedLoss`). Every tensor-product backend and float32 / float64, one table;
``--backends tdn-64`` adds the TDN of the same size (CP rank 64, shared path weights;
``tdn-full`` is its exact CP); ``escaip`` an EScAIP of the same channels (8 heads, 2 blocks, 64
neighbour slots; forces by autograd), ``escaip-direct`` the same with direct forces (non-conservative);
``facet`` the Facet of the same channels as tuned on 3BPA
(node features to ℓ = 2, grid MLP twice the channels wide; spline radial weights,
grid-MLP node updates, convolution on cuequivariance), ``facet-grid`` with the
Gaunt grid product as its convolution, ``facet-fused`` with the grid MLPs' hidden layer in the
fused Triton kernel (`mlip.nn.kernels.grid_activation`), ``facet-lean`` with MACE's node features
(ℓ ≤ 1: a convolution no wider than MACE's, the grid MLP in place of the symmetric contraction).

``--mace-torch-path DIR`` runs the same cases with mace-torch (installed in DIR, see
scripts/benchmark_mace_torch.py) in a subprocess of this call and prints the ratios.
It also times the ASE calculators on the same weights: mace-torch saves a seeded
ScaleShiftMACE (the Si model) and runs it through ``MACECalculator``; we convert that file
(`mlip.convert.mace_torch`) and run it through ``MLIPCalculator`` on the same structures,
and check that both give the same forces. ``--shape mp0b3`` makes that model MP-0b3-shaped
(density blocks, Agnesi transform, ZBL, 10 Bessel functions), as mace-torch's foundation models are.
The floor of an inference call is the bytes it cannot avoid moving (below) over the
copy bandwidth measured here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from timing import calculator_ms, case_parser, cuda_ms, silicon_atoms
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers import read_structures
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.cuda_graph import GraphedPotential
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.training.cuda_graph_loss import GraphedLoss
from mlip.training.loss import EnergyForcesStressLoss


def potential(elements: list[int], r_max: float, hidden: str, backend: str, avg_num_neighbors: float) -> Potential:
    """The benchmark MACE with ``backend`` (e3nn, cueq, auto); ``tdn-R``: the same backbone
    with CP-decomposed convolutions of rank R and path-weight sharing (`mlip.models.tdn.TDN`);
    ``facet``/``facet-grid``/``facet-fused``/``facet-lean``: Facet at the same width (`mlip.models.facet.Facet`)."""
    kwargs = dict(num_elements=len(elements), avg_num_neighbors=avg_num_neighbors, r_max=r_max, num_bessel=8,
                  max_ell=3, hidden_irreps=hidden, correlation=3, num_interactions=2, radial_mlp=[64, 64, 64],
                  readout_mlp=16)
    if backend.startswith("facet"):  # as tuned on 3BPA (docs/accuracy.md): ℓ ≤ 2 nodes, grid MLP 2C wide; lean: ℓ ≤ 1
        channels = int(hidden.split("x")[0])
        nodes = f"{channels}x0e+{channels}x1o" if backend == "facet-lean" else f"{channels}x0e+{channels}x1o+{channels}x2e"
        spec = {"target": "mlip.models.facet.Facet", "kwargs": dict(
            num_elements=len(elements), avg_num_neighbors=avg_num_neighbors, r_max=r_max, spline_basis=16, max_ell=3,
            hidden_irreps=nodes, num_interactions=2, grid_hidden=2 * channels,
            grid_resolution=6, readout_mlp=16, tp_backend="grid" if backend == "facet-grid" else "auto",
            grid_backend="auto" if backend == "facet-fused" else "torch")}
    elif backend.startswith("escaip"):  # C-wide tokens, 8 heads, 2 blocks, 64 slots; escaip-direct: direct forces
        spec = {"target": "mlip.models.escaip.EScAIP", "kwargs": dict(
            num_elements=len(elements), avg_num_neighbors=avg_num_neighbors, r_max=r_max, num_bessel=8,
            channels=int(hidden.split("x")[0]), heads=8, num_layers=2, max_neighbors=64, direction_ell=3,
            readout_mlp=64, direct_forces=backend == "escaip-direct")}
    elif backend.startswith("tdn-"):
        rank = backend[4:] if backend == "tdn-full" else int(backend[4:])
        spec = {"target": "mlip.models.tdn.TDN", "kwargs": dict(kwargs, cp_rank=rank, cp_share_paths=True)}
    else:
        spec = {"target": "mlip.models.mace.MACE", "kwargs": dict(kwargs, tp_backend=backend)}
    torch.manual_seed(0)
    return Potential(build_model(spec), elements, [0.0] * len(elements), 1.0, 0.0, model_spec=spec)


def silicon(repeat: int):
    """The rattled diamond Si (`timing.silicon_atoms`) as a graph at r_max 6 Å."""
    atoms = silicon_atoms(repeat)
    return structure_to_graph(structure_from_atoms(atoms, f"Si{len(atoms)}"), 6.0)


def inference_rows(graph, backend: str, dtype: torch.dtype, repeats: int) -> list[str]:
    """Eager and CUDA-graph rows for one system."""
    torch.set_default_dtype(dtype)
    model = potential([14], 6.0, "128x0e+128x1o", backend, graph.edge_index.shape[1] / graph.num_nodes)
    model = model.cuda().requires_grad_(False)
    batch = Batch.from_data_list([graph]).to("cuda")
    rows = []
    for name, call in (("", lambda: model(batch, compute_stress=True)), (" + CUDA graph", GraphedPotential(model))):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_ms(lambda: call(batch), repeats) if name else cuda_ms(call, repeats)
        peak = torch.cuda.max_memory_allocated() / 1e9
        rows.append(f"| Si {graph.num_nodes} E+F+S | mlip {backend}{name} | {str(dtype)[6:]} | {ms:.2f} "
                    f"| {graph.num_nodes / ms * 1000:,.0f} | {peak:.2f} |")
    return rows


def floor_ms(graph, dtype: torch.dtype, bandwidth: float) -> tuple[float, float]:
    """(GB, ms) an E+F+S call must move at least: per layer, the radial weights [E, numel] are
    written and read forward and again backward, the edge harmonics [E, 16] and the atomic
    basis A [n, 128·16] are written and read once each way; bandwidth in GB/s."""
    size = torch.finfo(dtype).bits // 8
    edges, nodes = graph.edge_index.shape[1], graph.num_nodes
    numels = (4 * 128, 10 * 128)  # channel-wise paths of layer 1 (scalars in) and layer 2 (0e+1o in), ℓ ≤ 3
    per_layer = [4 * edges * numel + 4 * edges * 16 + 4 * nodes * 128 * 16 for numel in numels]
    gigabytes = sum(per_layer) * size / 1e9
    return gigabytes, gigabytes / bandwidth * 1000


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus written)."""
    source = torch.empty(2**28, dtype=torch.float32, device="cuda")
    target = torch.empty_like(source)
    ms = cuda_ms(lambda: target.copy_(source), 20)
    return 2 * source.numel() * 4 / 1e9 / (ms / 1000)


def molecules(data_dir: Path) -> list | None:
    """The first 32 3BPA molecules (train_300K) as graphs at r_max 5 Å, or None without the samples."""
    path = data_dir / "3bpa" / "train_300K.xyz"
    if not path.is_file():
        return None
    return [structure_to_graph(s, 5.0) for s in read_structures(path, stress_key=None, virial_key=None)[:32]]


def training_step(graphs, backend: str, cuda_graph: bool):
    """(step, batch): one Adam step on an E+F loss for the 128x0e+128x1o+128x2e model, eager or
    with the loss and gradients replayed from a CUDA graph (`GraphedLoss`)."""
    elements = sorted({int(z) for g in graphs for z in g.atomic_numbers})
    n_edges = sum(g.edge_index.shape[1] for g in graphs) / sum(g.num_nodes for g in graphs)
    batch = Batch.from_data_list(graphs).to("cuda")
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=0.0)
    model = potential(elements, 5.0, "128x0e+128x1o+128x2e", backend, n_edges).cuda()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    graphed = GraphedLoss(model, loss_fn) if cuda_graph else None

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss, _ = graphed(batch) if graphed else loss_fn(model(batch, create_graph=True), batch)
        loss.backward()
        optimiser.step()

    return step, batch


def training_rows(graphs, backend: str, dtype: torch.dtype, repeats: int) -> list[str]:
    """Adam steps on E+F, eager and with the loss and gradients replayed from a CUDA graph."""
    torch.set_default_dtype(dtype)
    rows = []
    for name in ("", " + CUDA graph"):
        step, batch = training_step(graphs, backend, cuda_graph=bool(name))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_ms(step, repeats)
        peak = torch.cuda.max_memory_allocated() / 1e9
        atoms = batch.num_nodes
        rows.append(f"| train step, 32 3BPA ({atoms} atoms) | mlip {backend}{name} | {str(dtype)[6:]} | {ms:.2f} "
                    f"| {atoms / ms * 1000:,.0f} | {peak:.2f} |")
    return rows


def mace_torch_rows(path: str, args, calculator_model: Path | None = None) -> list[str]:
    """The same cases run by scripts/benchmark_mace_torch.py with mace-torch from ``path``."""
    env = dict(os.environ, PYTHONPATH=path, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    command = [sys.executable, str(Path(__file__).with_name("benchmark_mace_torch.py")), "--data-dir", str(args.data_dir),
               "--dtypes", *args.dtypes, "--repeats", str(args.repeats), "--shape", args.shape,
               "--device", args.device, "--cells", *map(str, args.cells)]
    if calculator_model is not None:
        command += ["--calculator-model", str(calculator_model)]
    if args.calculator_only:
        command += ["--calculator-only"]
    rows = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        for line in run.stdout:  # as it goes: a run cut short by a time limit keeps its rows
            print(line, end="", flush=True)
            if line.startswith("|"):
                rows.append(line.strip())
        stderr = run.stderr.read()
    if run.returncode != 0:
        print(f"mace-torch run failed ({run.returncode}):\n{stderr[-3000:]}")
    return rows


def converted_calculator_rows(model_file: Path, systems, dtypes: list[str], repeats: int,
                              device: str = "cuda") -> list[str]:
    """``MLIPCalculator`` on the mace-torch file converted to ours, on the structures mace-torch
    timed; each row says how far its forces are from ``MACECalculator``'s."""
    import numpy as np

    from mlip.calculator import MLIPCalculator
    from mlip.convert.mace_torch import convert_mace_torch
    from mlip.export import save_model

    converted = save_model(convert_mace_torch(model_file), model_file.with_suffix(".safetensors"))
    reference = np.load(model_file.with_suffix(".forces.npz"))
    rows = []
    for dtype in dtypes:
        calc = MLIPCalculator(converted, device=device, dtype=dtype)
        for atoms in systems:
            ms, forces, peak = calculator_ms(calc, atoms, repeats)
            theirs = reference[f"{dtype}_{len(atoms)}"]
            error = np.abs(forces - theirs).max() / np.abs(theirs).max()
            rows.append(f"| Si {len(atoms)} ASE calculator | mlip MLIPCalculator (converted) | {dtype} | {ms:.2f} "
                        f"| {len(atoms) / ms * 1000:,.0f} | {peak:.2f} |")
            print(f"converted Si {len(atoms)} {dtype}: forces differ from mace-torch's by {error:.1e} (relative)")
    return rows


def ratios(ours: list[str], theirs: list[str]) -> None:
    """Per case and dtype: mace-torch's fastest row over ours, and peak memory of both."""
    def parse(rows):
        table = {}
        for row in rows:
            case, backend, dtype, ms, _, peak = [c.strip() for c in row.strip("|").split("|")]
            key = (re.sub(r"\s+", " ", case), dtype)
            if key not in table or float(ms) < table[key][1]:
                table[key] = (backend, float(ms), float(peak))
        return table

    best_ours, best_theirs = parse(ours), parse(theirs)
    print("\n| case | dtype | mlip fastest | mace-torch fastest | speed-up | peak GB mlip / mace-torch |\n|---|---|---|---|---|---|")
    for key in best_ours:
        if key in best_theirs:
            (a, ms_a, peak_a), (b, ms_b, peak_b) = best_ours[key], best_theirs[key]
            peaks = f"{peak_a:.2f} / {peak_b:.2f}" if peak_a or peak_b else "not measured"  # calculator rows
            print(f"| {key[0]} | {key[1]} | {a} {ms_a:.2f} ms | {b} {ms_b:.2f} ms | {ms_b / ms_a:.2f}x | {peaks} |")


def main() -> None:
    parser = case_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--mace-torch-path", help="folder holding mace-torch 0.3.16 and e3nn 0.4.4")
    args = parser.parse_args()
    if args.device == "cpu" and not args.calculator_only:
        raise SystemExit("--device cpu times the ASE-calculator rows only: add --calculator-only")
    cuda = args.device == "cuda"
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model shape {args.shape}")
    systems = [silicon(n) for n in args.cells]
    if cuda:
        bandwidth = copy_bandwidth()
        for dtype in (getattr(torch, d) for d in args.dtypes):
            for graph in systems:
                gigabytes, ms = floor_ms(graph, dtype, bandwidth)
                print(f"floor, Si {graph.num_nodes} {str(dtype)[6:]}: {gigabytes:.2f} GB at {bandwidth:.0f} GB/s = {ms:.2f} ms")
    print("| case | backend | dtype | ms | atom-steps/s | peak GB |\n|---|---|---|---|---|---|")
    graphs = molecules(args.data_dir)
    rows = []
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for backend in [] if args.calculator_only else args.backends:
            for graph in systems:
                rows += inference_rows(graph, backend, dtype, args.repeats)
                print("\n".join(rows[-2:]), flush=True)
            if graphs is not None:
                rows += training_rows(graphs, backend, dtype, args.repeats)
                print("\n".join(rows[-2:]), flush=True)
    if args.mace_torch_path:
        model_file = Path(tempfile.mkdtemp()) / "mace_si.model"
        theirs = mace_torch_rows(args.mace_torch_path, args, model_file)
        if model_file.is_file():
            rows += converted_calculator_rows(model_file, [silicon_atoms(n) for n in args.cells], args.dtypes,
                                              args.repeats, args.device)
            print("\n".join(rows[-2 * len(args.dtypes):]), flush=True)
        ratios(rows, theirs)


if __name__ == "__main__":
    main()
