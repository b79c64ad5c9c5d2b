"""``mlip-eval``: score a trained model on structures, with an equivariance audit.

    mlip-eval model=outputs/run/model.safetensors data=test.xyz
    mlip-eval model=outputs/run/checkpoints/last.ckpt data=oc20_val.lmdb audit=equivariance num_rotations=16

Prints and writes (``output``, JSON) the errors against the labels the structures
carry (energy per atom, forces, stress: MAE and RMSE) and, with
``audit=equivariance``, the rotation equivariance errors (mean and max,
`mlip.evaluation.equivariance`), so approximate models show both side by side.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mlip.atomic import atomic_write_bytes
from mlip.data.graph import structure_to_graph
from mlip.data.readers import iter_structures
from mlip.data.structure import DataError
from mlip.evaluation.equivariance import equivariance_audit
from mlip.export import load_potential
from mlip.models.potential import Potential, UnknownElementError
from mlip.training.metrics import PotentialMetrics

# its own folder: configs/ has model/ and data/ groups, and here model= and data= are paths
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"
AUDITS = ("none", "equivariance")


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation described by ``cfg`` (configs/eval/eval.yaml); returns the report."""
    options = OmegaConf.to_container(cfg, resolve=True)
    if options["audit"] not in AUDITS:
        raise ValueError(f"audit must be one of {AUDITS}, got {options['audit']!r}")
    potential = load_potential(options["model"], options["device"], options["dtype"])
    potential.requires_grad_(False)
    files = options["data"] if isinstance(options["data"], list) else [options["data"]]
    structures = list(itertools.islice(
        itertools.chain.from_iterable(iter_structures(f, options["format"], **(options["reader"] or {})) for f in files),
        options["max_structures"],
    ))
    if not structures:
        raise DataError(f"{', '.join(map(str, files))}: holds no structures")
    metrics = PotentialMetrics()
    for structure in structures:
        graph = structure_to_graph(structure, potential.r_max).to(options["device"])
        periodic = bool(structure.pbc.all())
        pred = potential(graph, compute_forces=True, compute_stress=periodic)
        metrics.update({k: v.detach().cpu() for k, v in pred.items()}, graph.cpu())
    report = {"model": str(options["model"]), "data": [str(f) for f in files], "structures": len(structures),
              "errors": metrics.compute()}
    if options["audit"] == "equivariance":
        audit = equivariance_audit(potential, structures, options["num_rotations"], options["seed"])
        report["equivariance"] = {"rotations": options["num_rotations"], **audit.summary()}
    output = Path(options["output"] or Path(options["model"]).with_name(Path(options["model"]).stem + "_eval.json"))
    atomic_write_bytes(output, json.dumps(report, indent=1).encode())
    report["output"] = str(output)
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = evaluate(cfg)
    except (DataError, UnknownElementError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"mlip-eval: {exc}") from None
    print(f"{report['structures']} structures from {', '.join(report['data'])}")
    for section in ("errors", "equivariance"):
        for name, value in report.get(section, {}).items():
            print(f"  {section:>12} {name:<28} {value:.3e}" if isinstance(value, float) else f"  {section:>12} {name:<28} {value}")
    print(f"report: {report['output']}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
