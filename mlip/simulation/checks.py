"""Checks a structure must pass before a relaxation or MD run, with a message naming it.

A model evaluated on such input returns a number, just a meaningless one: an element it
was never trained on, two atoms on top of each other, or an atom with no neighbour
inside the cutoff (it feels no force and drifts forever).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip.data.graph import neighbour_list
from mlip.data.structure import Structure
from mlip.models.potential import Potential

MIN_DISTANCE = 0.5  # Å; closer pairs are overlapping atoms


class StructureError(ValueError):
    """A structure a simulation cannot start from; the message names it and says why."""


def check_structure(structure: Structure, potential: Potential, min_distance: float = MIN_DISTANCE) -> None:
    """Raise `StructureError` (or `UnknownElementError`) for input a simulation cannot use."""
    source = structure.source
    try:
        potential.species(torch.as_tensor(structure.atomic_numbers, device=potential.species_of_z.device))
    except ValueError as exc:
        raise StructureError(f"{source}: {exc}") from None
    if not np.isfinite(structure.positions).all():
        raise StructureError(f"{source}: positions are not finite")
    edge_index, shifts = neighbour_list(structure.positions, structure.cell, structure.pbc, potential.r_max)
    sender, receiver = edge_index
    if edge_index.shape[1]:
        vectors = structure.positions[sender] - structure.positions[receiver] + shifts @ structure.cell
        distances = np.linalg.norm(vectors, axis=1)
        closest = int(np.argmin(distances))
        if distances[closest] < min_distance:
            i, j = int(receiver[closest]), int(sender[closest])
            raise StructureError(
                f"{source}: atoms {i} and {j} are {distances[closest]:.3f} Å apart (< {min_distance} Å): overlapping atoms"
            )
    if structure.n_atoms > 1:
        lonely = np.flatnonzero(np.bincount(receiver, minlength=structure.n_atoms) == 0)
        if lonely.size:
            names = ", ".join(f"{int(k)} ({chemical_symbols[structure.atomic_numbers[k]]})" for k in lonely[:5])
            more = f" and {lonely.size - 5} more" if lonely.size > 5 else ""
            raise StructureError(
                f"{source}: atom(s) {names}{more} have no neighbour within r_max = {potential.r_max} Å: isolated atoms"
            )
