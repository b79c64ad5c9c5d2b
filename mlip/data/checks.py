"""Geometry checks every path shares (training, preprocessing, evaluation, relaxation, MD).

A model evaluated on such input returns a number, just a meaningless one: two atoms on
top of each other give a zero-length edge (NaN harmonics), an atom with no neighbour
feels no force. Each check raises `DataError` naming the structure's source.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip.data.structure import DataError

MIN_DISTANCE = 0.5  # Å; closer pairs in input data (training, evaluation, a simulation's start) overlap
COLLAPSE_DISTANCE = 0.01  # Å; during a simulation, closer pairs have collapsed (their edge has no direction)


def check_finite_prediction(source: str, prediction: dict[str, torch.Tensor], keys: list[str]) -> None:
    """Raise if a model's prediction of ``keys`` (energy, forces, stress) holds NaN or inf:
    no such number reaches a metric or a simulation."""
    bad = [key for key in keys if not bool(torch.isfinite(prediction[key]).all())]
    if bad:
        raise DataError(f"{source}: the model predicts a non-finite {' and '.join(bad)}")


def unknown_elements(atomic_numbers, known) -> str:
    """What is wrong when ``atomic_numbers`` (array-like) hold elements not in ``known``:
    "element Fe (Z=26) is not known to this model, trained on: Ni, Cu"."""
    unknown = sorted({int(z) for z in np.asarray(atomic_numbers).ravel()} - {int(z) for z in known})
    names = ", ".join(f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})" for z in unknown)
    trained = ", ".join(chemical_symbols[int(z)] for z in known)
    return f"element {names} is not known to this model, trained on: {trained}"


def edge_distances(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Lengths (Å) of the edges ``sender -> receiver`` of a neighbour list with cell ``shifts``."""
    sender, receiver = edge_index
    vectors = positions[sender] - positions[receiver] + np.asarray(shifts, dtype=np.float64) @ cell
    return np.linalg.norm(vectors, axis=1)


def check_overlaps(source: str, positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray,
                   min_distance: float = MIN_DISTANCE) -> None:
    """Raise if two atoms (or an atom and a periodic image) are closer than ``min_distance``."""
    if not edge_index.shape[1] or min_distance <= 0:
        return
    distances = edge_distances(positions, cell, edge_index, shifts)
    closest = int(np.argmin(distances))
    if distances[closest] < min_distance:
        i, j = int(edge_index[1, closest]), int(edge_index[0, closest])
        what = "an atom and its periodic image" if i == j else f"atoms {i} and {j}"
        raise DataError(f"{source}: {what} are {distances[closest]:.3f} Å apart (< {min_distance} Å): overlapping atoms")


def check_isolated(source: str, atomic_numbers: np.ndarray, edge_index: np.ndarray, r_max: float) -> None:
    """Raise if an atom of a structure of several has no neighbour within ``r_max``."""
    n = len(atomic_numbers)
    if n < 2:
        return
    lonely = np.flatnonzero(np.bincount(edge_index[1], minlength=n) == 0)
    if lonely.size:
        names = ", ".join(f"{int(k)} ({chemical_symbols[atomic_numbers[k]]})" for k in lonely[:5])
        more = f" and {lonely.size - 5} more" if lonely.size > 5 else ""
        raise DataError(f"{source}: atom(s) {names}{more} have no neighbour within r_max = {r_max} Å: isolated atoms")
