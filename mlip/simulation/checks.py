"""Checks a structure must pass before a relaxation or MD run, with a message naming it.

A model evaluated on such input returns a number, just a meaningless one: an element it
was never trained on, two atoms on top of each other, or an atom with no neighbour
inside the cutoff (it feels no force and drifts forever). The geometry checks are
`mlip.data.checks`, which training and evaluation use too.
"""

from __future__ import annotations

import numpy as np
import torch

from mlip.data.checks import MIN_DISTANCE, check_isolated, check_overlaps
from mlip.data.graph import neighbour_list
from mlip.data.structure import DataError, Structure
from mlip.models.potential import Potential


class StructureError(ValueError):
    """A structure a simulation cannot start from; the message names it and says why."""


def check_structure(structure: Structure, potential: Potential, min_distance: float = MIN_DISTANCE) -> None:
    """Raise `StructureError` for input a simulation cannot use: an element the model does not
    know, overlapping atoms, atoms with no neighbour (the geometry checks of `mlip.data.checks`)."""
    source = structure.source
    try:
        potential.species(torch.as_tensor(structure.atomic_numbers, device=potential.species_of_z.device))
    except ValueError as exc:
        raise StructureError(f"{source}: {exc}") from None
    if not np.isfinite(structure.positions).all():
        raise StructureError(f"{source}: positions are not finite")
    edge_index, shifts = neighbour_list(structure.positions, structure.cell, structure.pbc, potential.r_max)
    try:
        check_overlaps(source, structure.positions, structure.cell, edge_index, shifts, min_distance)
        check_isolated(source, structure.atomic_numbers, edge_index, potential.r_max)
    except DataError as exc:
        raise StructureError(str(exc)) from None
