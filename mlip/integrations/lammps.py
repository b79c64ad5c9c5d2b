"""mlip models in LAMMPS through ML-IAP (``pair_style mliap unified``).

    python -m mlip.integrations.lammps model.safetensors            # writes model.mliap beside it

and in the LAMMPS input (a LAMMPS built with ML-IAP and PYTHON; docs/md.md)::

    pair_style   mliap unified model.mliap 1
    pair_coeff   * * Cu Au                     # element of each atom type, in type order
    comm_modify  cutoff 13.0                   # at least layers x r_max (+ skin): see below

`MLIPUnified` is LAMMPS' `MLIAPUnified` for any mlip model file. LAMMPS gives it, each step, the
pairs within the cutoff (``rij`` = x_j - x_i) for local and ghost centres (the ghost-neighbour
mode, the ``1`` above); it evaluates the model on that whole graph, takes the energy of the
local atoms, and hands back the pair forces ∂E/∂r_ij (``update_pair_forces``: LAMMPS applies
them to both atoms, tallies the virial from them and sends ghost forces home). A message-passing
model of L layers sees atoms L x r_max away (EScAIP L + 1: its input features already read a
neighbour shell), so the ghost shell (``comm_modify cutoff``) must be at least that deep; then
energies and forces are exact.

The file LAMMPS loads holds only the model file's path and options (a small pickle of this
class, no weights): the weights are read from the safetensors model file, never unpickled.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip.atomic import file_mode

try:  # the LAMMPS python module of an ML-IAP + PYTHON build
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except ImportError:  # writing the file needs no LAMMPS
    class MLIAPUnified:  # type: ignore[no-redef]
        def __init__(self, interface=None, element_types=None, ndescriptors=None, nparams=None, rcutfac=None):
            self.interface, self.element_types = interface, element_types
            self.ndescriptors, self.nparams, self.rcutfac = ndescriptors, nparams, rcutfac


class MLIPUnified(MLIAPUnified):
    """A mlip model file as a LAMMPS ML-IAP unified model.

    Args:
        model_file: an mlip model file (``.safetensors``) or training checkpoint.
        dtype: ``float64`` or ``float32`` (LAMMPS exchanges float64 either way).
        device: ``cpu`` or ``cuda``.
        head: of a multi-head model, the head predicted.
    """

    def __init__(self, model_file: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
                 head: str | None = None):
        self.options = {"model_file": str(Path(model_file).resolve()), "dtype": dtype, "device": device, "head": head}
        self._load()

    def _load(self) -> None:
        from mlip.export import load_potential

        options = self.options
        potential = load_potential(options["model_file"], device=options["device"], dtype=options["dtype"])
        if not potential.conservative:
            raise ValueError(f"{options['model_file']}: its forces are predicted directly, not derivatives of the "
                             f"energy, and ML-IAP takes pair forces dE/dr_ij; export a model trained with "
                             f"direct_forces=false (conservative) for LAMMPS")
        if options["head"] is not None:
            potential.select_head(options["head"])
        self.potential = potential.requires_grad_(False)
        self.dtype, self.device = potential.dtype, potential.e0s.device
        self.known = [chemical_symbols[int(z)] for z in potential.elements]
        # every element name is accepted by pair_coeff, so that one the model lacks is refused
        # here by name (ML-IAP's own check says only "Incorrect args for pair coefficients");
        # LAMMPS' pair cutoff is 2 x rcutfac
        super().__init__(None, chemical_symbols[1:], ndescriptors=1, nparams=1, rcutfac=0.5 * potential.r_max)

    # the file LAMMPS unpickles holds the options only; the weights come from the model file
    def __getstate__(self) -> dict:
        return {"options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.options = state["options"]
        self._load()

    def compute_descriptors(self, data) -> None:
        """Unused: the model computes its own features."""

    def compute_gradients(self, data) -> None:
        """Unused: forces come from `compute_forces`."""

    def compute_forces(self, data) -> None:
        """Energy of the local atoms, per-atom energies and pair forces ∂E/∂r_ij, into ``data``."""
        nlocal, npairs = int(data.nlocal), int(data.npairs)
        if nlocal == 0:
            data.energy = 0.0
            return
        numbers = torch.as_tensor(np.asarray(data.elems), dtype=torch.long) + 1  # element_types start at H
        species = self.potential.species(numbers, check=False)  # -1 for an element the model lacks
        if bool((species < 0).any()):
            unknown = sorted({chemical_symbols[int(z)] for z in numbers[species < 0]})
            message = (f"{self.options['model_file']}: pair_coeff maps atom types to {unknown}, which the model "
                       f"does not know (it knows {self.known})")
            print(f"ERROR: {message}", flush=True)
            raise ValueError(message)
        species = species.to(self.device)
        if npairs == 0:
            i = j = np.zeros(0, dtype=np.int64)
            rij = np.zeros((0, 3))
        else:
            i, j, rij = np.asarray(data.pair_i), np.asarray(data.pair_j), np.asarray(data.rij)
        edge_index = torch.stack([torch.as_tensor(j, dtype=torch.long), torch.as_tensor(i, dtype=torch.long)]).to(self.device)
        vectors = torch.as_tensor(rij, dtype=self.dtype, device=self.device).requires_grad_(True)
        node_energy = self.potential.node_energies(species, edge_index, vectors)  # [ntotal] eV
        local = node_energy[:nlocal]
        energy = local.sum()
        forces = torch.autograd.grad(energy, vectors)[0] if npairs else vectors.detach()
        eatoms = np.zeros(int(data.nlistatoms))
        eatoms[:nlocal] = local.detach().double().cpu().numpy()
        data.eatoms = eatoms
        data.energy = float(energy.detach().double())
        if npairs:
            data.update_pair_forces(np.ascontiguousarray(forces.detach().double().cpu().numpy()))


def shells(potential) -> int:
    """How many r_max an atom's energy sees: the model's ``receptive_shells`` (EScAIP: its blocks and
    the neighbour shell of its input features), else its message-passing layers."""
    model = potential.model
    return int(getattr(model, "receptive_shells", None) or potential.model_spec["kwargs"].get("num_interactions", 1))


def write_lammps_model(model_file: str | os.PathLike, output: str | os.PathLike | None = None,
                       dtype: str = "float64", device: str = "cpu", head: str | None = None) -> Path:
    """Write the file ``pair_style mliap unified FILE 1`` loads (default: ``<model>.mliap``); atomically."""
    import pickle

    model_file = Path(model_file)
    output = Path(output) if output is not None else model_file.with_suffix(".mliap")
    if output.suffix in (".pt", ".pth"):
        raise ValueError(f"{output}: LAMMPS reads .pt/.pth files with torch.load; name it .mliap")
    unified = MLIPUnified(model_file, dtype, device, head)  # loads it once: a bad file fails here, not in LAMMPS
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(pickle.dumps(unified))
        os.chmod(tmp, file_mode())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    layers = shells(unified.potential)
    print(f"wrote {output}: elements {' '.join(unified.known)}, r_max {unified.potential.r_max} Å, sees {layers} x r_max\n"
          f"  pair_style mliap unified {output} 1\n  pair_coeff * * <element of each type>\n"
          f"  comm_modify cutoff {layers * unified.potential.r_max + 1.0:g}   # shells x r_max + skin")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the ML-IAP file LAMMPS loads for an mlip model file.")
    parser.add_argument("model_file")
    parser.add_argument("--output", help="default: the model file's name with .mliap")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--head", help="of a multi-head model, the head LAMMPS runs")
    args = parser.parse_args()
    # the class LAMMPS unpickles must be importable by name: run as ``python -m`` this module is
    # ``__main__``, so the writer is taken from the module under its own name
    module = importlib.import_module("mlip.integrations.lammps")
    try:
        module.write_lammps_model(args.model_file, args.output, args.dtype, args.device, args.head)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"mlip.integrations.lammps: {exc}") from None


if __name__ == "__main__":
    main()
