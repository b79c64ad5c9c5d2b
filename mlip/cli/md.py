"""``mlip-md``: a short NVE/NVT/NPT run with a trained model.

    mlip-md model=outputs/run/model.safetensors input=cell.extxyz ensemble=nve timestep=1.0 steps=2000

Writes ``md.traj`` and ``md_log.csv`` (time, potential/kinetic/total energy,
temperature, volume) into ``output_dir`` and prints the mean temperature and the
total-energy drift (eV/atom/ps). Exit status 1 when the structure is unusable or the
run fails (non-finite energy).
"""

from __future__ import annotations

import itertools
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
from mlip.simulation.checks import StructureError, check_structure
from mlip.simulation.md import MDResult, run_md, write_md
from mlip.threads import set_threads

CONFIG_DIR = config_dir("md")
log = logging.getLogger("mlip.md")


def run(cfg: DictConfig) -> tuple[MDResult, Path]:
    """Run what ``cfg`` (configs/md/md.yaml) names; returns the record and the output folder."""
    o = OmegaConf.to_container(cfg, resolve=True)
    set_threads(o.get("threads"))
    potential = load_potential(o["model"], o["device"], o["dtype"]).requires_grad_(False)
    structure = next(itertools.islice(iter_structures(o["input"], o["format"]), o["index"], None), None)
    if structure is None:
        raise DataError(f"{o['input']}: has no record {o['index']}")
    check_structure(structure, potential, o["min_distance"])
    if not potential.conservative:
        log.warning("%s predicts its forces directly (non-conservative): they are not the gradient of its energy, so "
                    "no ensemble conserves that energy and the drift measures the model, not the integrator",
                    o["model"])
    output_dir = prepare_output_dir(o["output_dir"] or f"{Path(o['input']).name.split('.')[0]}_md",
                                    bool(o.get("overwrite")), "mlip-md")
    options = {k: o[k] for k in ("ensemble", "timestep", "steps", "temperature", "friction", "pressure", "taut",
                                 "taup", "compressibility", "seed", "interval")}
    calculator = MLIPCalculator(potential, o["device"], o["dtype"])
    result, _ = run_md(atoms_from_structure(structure), calculator, trajectory=output_dir / "md.traj",
                       progress=bool(o.get("progress", True)), **options)
    write_md(result, output_dir)
    return result, output_dir


def run_command(cfg: DictConfig) -> None:
    """The command on a composed config: run, print, exit with its status (`mlip.cli.launch`)."""
    try:
        result, output_dir = run(cfg)
    except (DataError, StructureError, FileNotFoundError, FileExistsError, ValueError) as exc:
        raise SystemExit(f"mlip-md: {exc}") from None
    # the energy drift measures the integrator in NVE only: a thermostat or barostat exchanges energy by design
    drift = f", drift {result.drift:.2e} eV/atom/ps" if result.ensemble == "nve" else ""
    print(f"{result.ensemble}: {len(result.time)} records over {result.time[-1] if result.time else 0:.0f} fs, "
          f"mean T {np.mean(result.temperature):.1f} K{drift} -> {output_dir}")
    if result.status != "completed":
        raise SystemExit(f"mlip-md: {result.message}")


_hydra_main = hydra.main(version_base="1.3", config_path=search_path("md"), config_name="md")(run_command)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
