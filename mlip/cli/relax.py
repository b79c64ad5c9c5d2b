"""``mlip-relax``: relax structures with a trained model and write a summary.

    mlip-relax model=outputs/run/model.safetensors input=slabs.extxyz optimizer=bfgs fmax=0.02
    mlip-relax model=model.safetensors input=bulk.cif relax_cell=true pressure=1.0
    mlip-relax model=model.safetensors input=cells.extxyz batched=true device=cuda dtype=float32

Writes ``relaxed.extxyz``, ``summary.csv``/``summary.json`` and ``trajectories/NNNNN.traj``
into ``output_dir`` and prints the summary table. A structure that cannot be relaxed
(unknown element, overlapping or isolated atoms, energy turning NaN) is reported as
failed with the reason while the others carry on; the exit status is then 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlip.calculator import MLIPCalculator
from mlip.cli.output_dir import prepare_output_dir
from mlip.configs import config_dir, search_path
from mlip.data.readers import iter_structures
from mlip.data.readers.atoms import atoms_from_structure
from mlip.data.structure import DataError
from mlip.export import load_potential
from mlip.simulation.batched_fire import BatchedFIRE
from mlip.simulation.checks import StructureError, check_structure
from mlip.simulation.relax import FAILED, RelaxResult, format_summary, relax_all, write_results
from mlip.threads import set_threads

log = logging.getLogger(__name__)

CONFIG_DIR = config_dir("relax")


def read_checked(path, fmt: str, reader: dict | None, potential, min_distance: float,
                 fix_tags: list[int] | None = None) -> list[tuple]:
    """(index, source, atoms or the `StructureError` that rules the structure out) for each record.

    ``fix_tags``: atoms with these tags are held fixed too (OC20: ``[0]``, the subsurface).
    """
    items = []
    for index, structure in enumerate(iter_structures(path, fmt, **(reader or {}))):
        try:
            check_structure(structure, potential, min_distance)
            if fix_tags:
                if structure.tags is None:
                    raise StructureError(f"{structure.source}: fix_tags={fix_tags} but the structure has no tags")
                by_tag = np.isin(structure.tags, fix_tags)
                structure.fixed = by_tag if structure.fixed is None else structure.fixed | by_tag
            items.append((index, structure.source, atoms_from_structure(structure)))
        except StructureError as exc:
            items.append((index, structure.source, exc))
    if not items:
        raise DataError(f"{path}: holds no structures")
    return items


def run(cfg: DictConfig) -> tuple[list[RelaxResult], dict]:
    """Relax what ``cfg`` (configs/relax/relax.yaml) names; returns the results and the written paths."""
    o = OmegaConf.to_container(cfg, resolve=True)
    set_threads(o.get("threads"))
    potential = load_potential(o["model"], o["device"], o["dtype"]).requires_grad_(False)
    items = read_checked(o["input"], o["format"], o["reader"], potential, o["min_distance"], o["fix_tags"])
    if not potential.conservative:
        log.warning("%s predicts its forces directly (non-conservative): the optimiser stops where they vanish, "
                    "which need not be a minimum of its energy, and may circle without converging; a model trained "
                    "with forces by autograd (direct_forces=false) relaxes to its energy's minimum", o["model"])
    output_dir = prepare_output_dir(o["output_dir"] or f"{Path(o['input']).name.split('.')[0]}_relax",
                                    bool(o.get("overwrite")), "mlip-relax")
    if o["batched"]:
        if o["relax_cell"] or o["optimizer"] != "fire":
            raise ValueError("batched relaxation is FIRE on positions only: set optimizer=fire relax_cell=false")
        from tqdm.auto import tqdm

        good = [item for item in items if not isinstance(item[2], Exception)]
        with tqdm(total=len(good), desc="relax (batched)", unit="structure", disable=not o["progress"]) as bar:
            skin = o["skin"]
            if skin == "auto":  # measured: the skin pays on CUDA, not on the CPU (docs/performance.md)
                skin = 1.0 if str(o["device"]).startswith("cuda") else 0.0
            fire = BatchedFIRE(potential, o["fmax"], o["steps"], o["max_structures"], o["max_atoms"], skin=float(skin))
            relaxed = fire.run(good, bar)
        failed = [RelaxResult(i, source, "", FAILED, message=str(e)) for i, source, e in items if isinstance(e, Exception)]
        results = sorted(relaxed + failed, key=lambda r: r.index)
    else:
        if o["trajectories"]:
            (output_dir / "trajectories").mkdir(parents=True, exist_ok=True)
        results = relax_all(
            items,
            lambda: MLIPCalculator(potential, o["device"], o["dtype"]),
            progress=o["progress"],
            trajectory_dir=(output_dir / "trajectories") if o["trajectories"] else None,
            optimizer=o["optimizer"], fmax=o["fmax"], steps=o["steps"], relax_cell=o["relax_cell"],
            pressure=o["pressure"],
        )
    return results, write_results(results, output_dir)


def run_command(cfg: DictConfig) -> None:
    """The command on a composed config: run, print, exit with its status (`mlip.cli.launch`)."""
    try:
        results, paths = run(cfg)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        raise SystemExit(f"mlip-relax: {exc}") from None
    print(format_summary(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if any(r.status == FAILED for r in results):
        raise SystemExit(1)


_hydra_main = hydra.main(version_base="1.3", config_path=search_path("relax"), config_name="relax")(run_command)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
