"""Support for tests/convert (run in mace-torch's environment): seeded mace-torch models and their predictions.

Small seeded mace-torch models and their predictions: the oracle of `mlip-convert`'s tests.

Runs in mace-torch's own environment (it pins e3nn 0.4.4, so never in ours):

    python -m venv /tmp/macevenv && /tmp/macevenv/bin/pip install torch==2.13.0 mace-torch==0.3.16
    /tmp/macevenv/bin/python scripts/make_mace_torch_oracle.py --out tests/convert/mace_torch_oracle

Writes one ``<name>.model`` per variant (a pickled mace-torch module, as ``mace_run_train``
saves it), ``structures.extxyz`` (molecules and periodic cells of H, C, N, O) and
``references.json``: energies (eV), forces (eV/Å) and stress (eV/Å³, ASE's Voigt order)
from ``mace.calculators.MACECalculator`` in float64, per model and structure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import write

ELEMENTS = [1, 6, 7, 8]
E0S = [-13.6, -1029.8, -1484.9, -2041.8]
# name: (class, first interaction, correlation, hidden irreps, num_interactions, max_ell, dtype[, heads][, options])
# first interaction: Residual, Plain (RealAgnosticInteractionBlock), Density or DensityResidual (the later
# layers are then DensityResidual: MACE-MP-0b3 / MPA-0 / OMAT-0); options: mace-torch keyword arguments
VARIANTS = {
    "scaleshift_residual_nu3_l1_f64": ("ScaleShiftMACE", "Residual", 3, "8x0e+8x1o", 2, 2, "float64"),
    "scaleshift_residual_nu2_l2_f32": ("ScaleShiftMACE", "Residual", 2, "6x0e+6x1o+6x2e", 2, 2, "float32"),
    "mace_plain_first_nu1_l0_f64": ("MACE", "Plain", 1, "8x0e", 2, 2, "float64"),
    "mace_plain_first_nu3_l1_3layers_f64": ("MACE", "Plain", [3, 2, 1], "6x0e+6x1o", 3, 2, "float64"),
    "scaleshift_two_heads_nu2_l1_f64": ("ScaleShiftMACE", "Residual", 2, "6x0e+6x1o", 2, 1, "float64", ["pbe", "r2scan"]),
    # foundation-model parts: density blocks, the Agnesi transform and ZBL (scaled by ScaleShiftMACE, not by MACE)
    "scaleshift_density_agnesi_zbl_nu3_l1_f64": ("ScaleShiftMACE", "Density", 3, "8x0e+8x1o", 2, 2, "float64",
                                                 {"pair_repulsion": True, "distance_transform": "Agnesi"}),
    "mace_density_residual_zbl_nu2_l1_f64": ("MACE", "DensityResidual", 2, "6x0e+6x1o", 2, 2, "float64",
                                             {"pair_repulsion": True}),
    "scaleshift_residual_agnesi_nu2_l1_f32": ("ScaleShiftMACE", "Residual", 2, "6x0e+6x1o", 2, 1, "float32",
                                              {"distance_transform": "Agnesi"}),
    # MH-1's parts: non-linear residual blocks everywhere, edge irreps apart from the hidden ones (scalars
    # only in the first layer), element-agnostic products, no cutoff on the radial basis, two heads
    "scaleshift_nonlinear_edge_agnostic_two_heads_f64": (
        "ScaleShiftMACE", "ResidualNonLinear", 2, "8x0e+8x1o", 2, 2, "float64", ["omat", "omol"],
        {"pair_repulsion": True, "distance_transform": "Agnesi", "edge_irreps": "4x0e+4x1o",
         "use_edge_irreps_first": True, "use_agnostic_product": True, "apply_cutoff": False,
         "later": "ResidualNonLinear"}),
    # a standard block first, density blocks after (``later``: the class of the later layers)
    "scaleshift_plain_first_density_zbl_nu2_l1_f64": ("ScaleShiftMACE", "Plain", 2, "6x0e+6x1o", 3, 1, "float64",
                                                      {"pair_repulsion": True, "distance_transform": "Agnesi",
                                                       "later": "DensityResidual"}),
}


def heads_and_options(variant) -> tuple[list[str] | None, dict]:
    extra = list(variant[7:])
    options = extra.pop() if extra and isinstance(extra[-1], dict) else {}
    return (extra[0] if extra else None), options


def structures(rng: np.random.Generator) -> list[Atoms]:
    """Three molecules and two periodic cells with all four elements, no two atoms closer than 0.9 Å."""
    out = []
    for n, cell in ((7, None), (12, None), (5, None), (10, 5.5), (16, 6.5)):
        while True:
            box = cell if cell is not None else 1.3 * n ** (1 / 3) + 1.0
            positions = rng.uniform(0, box, size=(n, 3))
            atoms = Atoms(numbers=rng.choice(ELEMENTS, size=n), positions=positions)
            if cell is not None:
                atoms.set_cell(np.diag([cell, cell * 1.1, cell * 0.95]) + rng.normal(0, 0.2, (3, 3)))
                atoms.pbc = True
            distances = atoms.get_all_distances(mic=cell is not None)
            if (distances[np.triu_indices(n, 1)] > 0.9).all() and len(set(atoms.numbers)) >= 3:
                break
        out.append(atoms)
    return out


def build(variant, seed: int):
    from e3nn import o3
    from mace import modules

    cls, first, correlation, hidden, layers, max_ell, dtype = variant[:7]
    heads, options = heads_and_options(variant)
    options = dict(options)
    later = "RealAgnostic" + options.pop("later", "DensityResidual" if first.startswith("Density") else "Residual") + \
        "InteractionBlock"
    first_cls = {"Residual": "RealAgnosticResidualInteractionBlock", "Plain": "RealAgnosticInteractionBlock",
                 "Density": "RealAgnosticDensityInteractionBlock",
                 "DensityResidual": "RealAgnosticDensityResidualInteractionBlock",
                 "ResidualNonLinear": "RealAgnosticResidualNonLinearInteractionBlock"}[first]
    if "edge_irreps" in options:
        options["edge_irreps"] = o3.Irreps(options["edge_irreps"])
    e0s = np.array(E0S) if heads is None else np.array([E0S, [e + 1.7 for e in E0S]])
    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(seed)
    kwargs = dict(
        r_max=4.5, num_bessel=6, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=modules.interaction_classes[later], interaction_cls_first=modules.interaction_classes[first_cls],
        num_interactions=layers, num_elements=len(ELEMENTS), hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("4x0e"), atomic_energies=e0s, avg_num_neighbors=7.3, heads=heads,
        atomic_numbers=ELEMENTS, correlation=correlation, gate=torch.nn.functional.silu, radial_MLP=[8, 8], **options,
    )
    if cls == "ScaleShiftMACE":
        scale, shift = (0.83, -0.21) if heads is None else ([0.83, 1.21], [-0.21, 0.05])
        model = modules.ScaleShiftMACE(atomic_inter_scale=scale, atomic_inter_shift=shift, **kwargs)
    else:
        model = modules.MACE(**kwargs)
    with torch.no_grad():  # every weight matters: mace-torch initialises some to small values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/convert/mace_torch_oracle"))
    parser.add_argument("--only", nargs="*", help="write these variants only, keeping the other references")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from mace.calculators import MACECalculator

    atoms_list = structures(np.random.default_rng(7))
    write(args.out / "structures.extxyz", atoms_list)
    references = json.loads((args.out / "references.json").read_text()) if args.only else {}
    for k, (name, variant) in enumerate(VARIANTS.items()):  # seed k: a variant's model never changes
        if args.only and name not in args.only:
            continue
        model = build(variant, seed=k)
        path = args.out / f"{name}.model"
        torch.save(model, path)
        for head in heads_and_options(variant)[0] or [None]:
            options = {} if head is None else {"head": head}
            calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64", **options)
            rows = []
            for atoms in atoms_list:
                atoms = atoms.copy()
                atoms.calc = calc
                row = {"energy": float(atoms.get_potential_energy()), "forces": atoms.get_forces().tolist()}
                if atoms.pbc.all():
                    row["stress"] = atoms.get_stress().tolist()
                rows.append(row)
            references[name if head is None else f"{name}@{head}"] = {
                "model": f"{name}.model", "head": head, "variant": [v for v in variant if not isinstance(v, dict)],
                **({"options": heads_and_options(variant)[1]} if heads_and_options(variant)[1] else {}), "predictions": rows
            }
            print(f"{name} {head or ''}: {path.stat().st_size / 1024:.0f} KiB, energies {[round(r['energy'], 4) for r in rows]}")
    (args.out / "references.json").write_text(json.dumps(references, indent=1))


if __name__ == "__main__":
    main()
