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
energies and forces are exact. At its first step the model measures how deep the ghost shell
LAMMPS gave it is (from the pairs: how far the farthest ghost lies from the local atoms) and
stops, naming the ``comm_modify cutoff`` to set, when it is shallower than that.

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
        check_ghosts: at the first step, refuse a ghost shell shallower than the model sees
            (`ghost_shell_depth`); False for a system whose atoms never reach that far (a
            cluster whose periodic images are nearer than the model's reach but not beyond it).
    """

    def __init__(self, model_file: str | os.PathLike, dtype: str = "float64", device: str = "cpu",
                 head: str | None = None, check_ghosts: bool = True):
        self.options = {"model_file": str(Path(model_file).resolve()), "dtype": dtype, "device": device, "head": head,
                        "check_ghosts": bool(check_ghosts)}
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
        self.dtype, self.device = potential.e0s.dtype, potential.e0s.device
        self.known = [chemical_symbols[int(z)] for z in potential.elements]
        self.reach = shells(potential) * potential.r_max  # Å: how far an atom's energy sees
        self._ghosts_checked = not options.get("check_ghosts", True)
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
        if not self._ghosts_checked:
            self._check_ghost_shell(nlocal, len(numbers), i, j, rij)
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

    def _check_ghost_shell(self, nlocal: int, ntotal: int, i: np.ndarray, j: np.ndarray, rij: np.ndarray) -> None:
        """Refuse a ghost shell shallower than the model's reach (once, at the first step)."""
        self._ghosts_checked = True
        depth = ghost_shell_depth(nlocal, ntotal, i, j, rij)
        if depth is not None and depth < self.reach - 1e-6:
            message = (f"{self.options['model_file']}: the ghost atoms LAMMPS passes reach only {depth:.2f} Å beyond "
                       f"the local atoms, but this model's energies see {self.reach:g} Å (its layers x r_max), so "
                       f"energies and forces would be wrong; set comm_modify cutoff {self.reach + 1.0:g} (reach + "
                       f"neighbour skin) before the run")
            print(f"ERROR: {message}", flush=True)
            raise ValueError(message)


def ghost_shell_depth(nlocal: int, ntotal: int, i: np.ndarray, j: np.ndarray, rij: np.ndarray) -> float | None:
    """How far (Å) the farthest ghost atom connected to the local atoms lies from the nearest of
    them, from the pair list alone (positions rebuilt along the pairs, x_j = x_i + r_ij, in each
    connected part that holds a local atom); None without ghost atoms.

    LAMMPS hands over ghosts up to ``comm_modify cutoff`` beyond the local atoms' box, so this is
    at least that cutoff wherever atoms fill the space that far.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components
    from scipy.spatial import cKDTree

    if ntotal <= nlocal or len(i) == 0:
        return None
    row_of = coo_matrix((np.arange(1, len(i) + 1), (i, j)), shape=(ntotal, ntotal)).tocsr()  # pair -> its row + 1
    _, labels = connected_components(row_of, directed=False)
    depth = None
    for part in np.unique(labels[:nlocal]):
        root = int(np.flatnonzero(labels[:nlocal] == part)[0])
        order, parent = breadth_first_order(row_of, root, directed=False, return_predecessors=True)
        nodes, ups = order[1:], parent[order[1:]]
        forward = np.asarray(row_of[ups, nodes]).ravel()  # pair up -> node: x_node = x_up + r
        backward = np.asarray(row_of[nodes, ups]).ravel()  # else node -> up: x_node = x_up - r
        step = np.where((forward > 0)[:, None], rij[np.maximum(forward, 1) - 1], -rij[np.maximum(backward, 1) - 1])
        positions = np.zeros((ntotal, 3))
        for node, up, vector in zip(nodes.tolist(), ups.tolist(), step):  # parents come first in BFS order
            positions[node] = positions[up] + vector
        local, ghosts = order[order < nlocal], order[order >= nlocal]
        if len(ghosts):
            distances, _ = cKDTree(positions[local]).query(positions[ghosts])
            depth = max(depth or 0.0, float(distances.max()))
    return depth


def shells(potential) -> int:
    """How many r_max an atom's energy sees: the model's ``receptive_shells`` (EScAIP: its blocks and
    the neighbour shell of its input features), else its message-passing layers."""
    model = potential.model
    return int(getattr(model, "receptive_shells", None) or potential.model_spec["kwargs"].get("num_interactions", 1))


def write_lammps_model(model_file: str | os.PathLike, output: str | os.PathLike | None = None,
                       dtype: str = "float64", device: str = "cpu", head: str | None = None,
                       check_ghosts: bool = True) -> Path:
    """Write the file ``pair_style mliap unified FILE 1`` loads (default: ``<model>.mliap``); atomically."""
    import pickle

    model_file = Path(model_file)
    output = Path(output) if output is not None else model_file.with_suffix(".mliap")
    if output.suffix in (".pt", ".pth"):
        raise ValueError(f"{output}: LAMMPS reads .pt/.pth files with torch.load; name it .mliap")
    unified = MLIPUnified(model_file, dtype, device, head, check_ghosts)  # loads it once: a bad file fails here, not in LAMMPS
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
    parser.add_argument("--no-ghost-check", action="store_true",
                        help="do not refuse a ghost shell shallower than the model's reach (see the module's docs)")
    args = parser.parse_args()
    # the class LAMMPS unpickles must be importable by name: run as ``python -m`` this module is
    # ``__main__``, so the writer is taken from the module under its own name
    module = importlib.import_module("mlip.integrations.lammps")
    try:
        module.write_lammps_model(args.model_file, args.output, args.dtype, args.device, args.head,
                                  not args.no_ghost_check)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"mlip.integrations.lammps: {exc}") from None


if __name__ == "__main__":
    main()
