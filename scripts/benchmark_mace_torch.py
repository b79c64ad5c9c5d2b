#!/usr/bin/env python
"""Support for benchmark.py (not run by hand): its cases with mace-torch, in mace-torch's environment.

The cases of scripts/benchmark.py run with mace-torch, as rows of the same table.

    PYTHONPATH=/tmp/site_mace TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \\
        python scripts/benchmark_mace_torch.py --data-dir ../shared/datasets

mace-torch pins e3nn 0.4.4, which mlip cannot share a process with, so this script
imports nothing from mlip (scripts/benchmark.py starts it in a subprocess with
``--mace-torch-path``). Same systems, sizes and repeats as benchmark.py; the
cuequivariance rows use mace-torch's fast path (all operations, fused convolution).
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import torch
from e3nn import o3
from mace import data as mace_data
from mace import modules
from mace.modules.wrapper_ops import CuEquivarianceConfig
from mace.tools import torch_geometric
from mace.tools.utils import AtomicNumberTable
from timing import SHAPES, calculator_ms, case_parser, cuda_ms, silicon_atoms


def batch_of(atoms_list, elements: list[int], r_max: float, device: str):
    for atoms in atoms_list:  # ase.io.read puts the labels into a calculator
        if atoms.calc is not None:
            atoms.info["REF_energy"] = atoms.get_potential_energy()
            atoms.arrays["REF_forces"] = atoms.get_forces()
    keys = mace_data.KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    table = AtomicNumberTable(elements)
    graphs = [
        mace_data.AtomicData.from_config(mace_data.config_from_atoms(a, key_specification=keys), z_table=table, cutoff=r_max)
        for a in atoms_list
    ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)
    return next(iter(loader)).to(device)


def model_of(elements: list[int], r_max: float, hidden: str, backend: str, avg_num_neighbors: float, device: str,
             shape: str = "medium"):
    torch.manual_seed(0)
    cueq = CuEquivarianceConfig(enabled=True, layout="ir_mul", group="O3_e3nn", optimize_all=True, conv_fusion=True)
    kind = SHAPES[shape]
    options = dict(kind["options"])
    if "edge_irreps" in options:
        options["edge_irreps"] = o3.Irreps(options["edge_irreps"])
    hidden = kind.get("hidden", hidden)
    model = modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=kind["num_bessel"], num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes[kind["later"]],
        interaction_cls_first=modules.interaction_classes[kind["first"]], **options,
        num_interactions=2, num_elements=len(elements), hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(elements)), avg_num_neighbors=avg_num_neighbors, atomic_numbers=elements,
        correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0, atomic_inter_shift=0.0, cueq_config=cueq if backend == "cueq" else None,
    )
    return model.to(device)


def inference_row(atoms, backend: str, dtype: torch.dtype, repeats: int) -> str:
    torch.set_default_dtype(dtype)
    batch = batch_of([atoms], [14], 6.0, "cuda")
    model = model_of([14], 6.0, "128x0e+128x1o", backend, batch.edge_index.shape[1] / len(atoms), "cuda")
    model.requires_grad_(False)
    torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(lambda: model(batch.to_dict(), compute_force=True, compute_stress=True), repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    n = len(atoms)
    return f"| Si {n} E+F+S | mace-torch {backend} | {str(dtype)[6:]} | {ms:.2f} | {n / ms * 1000:,.0f} | {peak:.2f} |"


def training_row(molecules, backend: str, dtype: torch.dtype, repeats: int) -> str:
    torch.set_default_dtype(dtype)
    elements = sorted({int(z) for a in molecules for z in a.numbers})
    batch = batch_of(molecules, elements, 5.0, "cuda")
    avg = batch.edge_index.shape[1] / batch.num_nodes
    model = model_of(elements, 5.0, "128x0e+128x1o+128x2e", backend, avg, "cuda")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = modules.WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=10.0).to("cuda")

    def step():
        optimiser.zero_grad(set_to_none=True)
        out = model(batch.to_dict(), training=True, compute_force=True)
        loss_fn(pred=out, ref=batch).backward()
        optimiser.step()

    torch.cuda.reset_peak_memory_stats()
    ms = cuda_ms(step, repeats)
    peak = torch.cuda.max_memory_allocated() / 1e9
    atoms = batch.num_nodes
    return f"| train step, 32 3BPA ({atoms} atoms) | mace-torch {backend} | {str(dtype)[6:]} | {ms:.2f} | {atoms / ms * 1000:,.0f} | {peak:.2f} |"


def calculator_rows(systems, model_file: Path, dtypes: list[str], repeats: int, device: str = "cuda",
                    shape: str = "medium") -> list[str]:
    """``MACECalculator`` on a seeded e3nn ScaleShiftMACE of ``shape`` saved to ``model_file`` (which
    scripts/benchmark.py converts and runs through ``MLIPCalculator``); forces saved beside it."""
    from mace.calculators import MACECalculator

    torch.set_default_dtype(torch.float64)
    avg = 45.0  # about the neighbours per atom of diamond Si at 6 Å
    model = model_of([14], 6.0, "128x0e+128x1o", "e3nn", avg, "cpu", shape)
    torch.save(model, model_file)
    rows, forces = [], {}
    for dtype in dtypes:
        for name, options in (("", {}), (" cueq", {"enable_cueq": True})):
            try:
                calc = MACECalculator(model_paths=str(model_file), device=device, default_dtype=dtype, **options)
            except Exception as error:  # its cuequivariance path needs cuequivariance-torch and a GPU
                print(f"MACECalculator{name} {dtype}: not timed ({type(error).__name__}: {error})", flush=True)
                continue
            for atoms in systems:
                ms, f, peak = calculator_ms(calc, atoms, repeats)
                forces.setdefault(f"{dtype}_{len(atoms)}", f)
                rows.append(f"| Si {len(atoms)} ASE calculator | mace-torch MACECalculator{name} | {dtype} | {ms:.2f} "
                            f"| {len(atoms) / ms * 1000:,.0f} | {peak:.2f} |")
                print(rows[-1], flush=True)
    np.savez(model_file.with_suffix(".forces.npz"), **forces)
    return rows


def main() -> None:
    parser = case_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--calculator-model", type=Path, help="also time MACECalculator on a model saved here")
    args = parser.parse_args()
    systems = [silicon_atoms(n) for n in args.cells]
    path = args.data_dir / "3bpa" / "train_300K.xyz"
    molecules = ase.io.read(path, index=":32") if path.is_file() else None
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for backend in [] if args.calculator_only else args.backends:
            for atoms in systems:
                print(inference_row(atoms, backend, dtype, args.repeats), flush=True)
            if molecules is not None:
                print(training_row(molecules, backend, dtype, args.repeats), flush=True)
    if args.calculator_model is not None:
        calculator_rows(systems, args.calculator_model, args.dtypes, args.repeats, args.device, shape=args.shape)


if __name__ == "__main__":
    main()
