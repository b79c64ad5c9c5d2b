"""Replay data: structures of the foundation's domain trained beside the new data, so that the
shared layers keep what the foundation knew (multi-head fine-tuning).

The structures come from the user's files, are filtered to the run's elements, selected to a
count (random, or farthest-point sampling on a cheap descriptor: composition and the
distribution of neighbour distances), and labelled by the foundation itself by default
(``labels: foundation``), so no original DFT labels are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch_geometric.data import Batch

from mlip.data.graph import structure_to_graph
from mlip.data.readers import read_structures
from mlip.data.structure import DataError, Structure
from mlip.models.potential import Potential

SELECTIONS = ("random", "fps", "first")
LABELS = ("foundation", "dft")
DESCRIPTOR_BINS = 16


def within_elements(structures: Sequence[Structure], elements: Sequence[int]) -> list[Structure]:
    """The structures made only of ``elements`` (atomic numbers)."""
    allowed = set(int(z) for z in elements)
    return [s for s in structures if set(s.atomic_numbers.tolist()) <= allowed]


def descriptor(structure: Structure, elements: Sequence[int], r_max: float) -> np.ndarray:
    """Composition fractions [Z] and the histogram of neighbour distances per atom [bins] in (0, r_max]."""
    composition = np.array([(structure.atomic_numbers == z).mean() for z in elements])
    graph = structure_to_graph(structure, r_max)
    sender, receiver = graph.edge_index
    vectors = graph.positions[sender] - graph.positions[receiver] + graph.shifts @ graph.cell[0]
    lengths = torch.linalg.vector_norm(vectors, dim=-1).numpy()
    histogram, _ = np.histogram(lengths, bins=DESCRIPTOR_BINS, range=(0.0, r_max))
    return np.concatenate([composition, histogram / max(structure.n_atoms, 1) / 10.0])


def farthest_points(features: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """Indices of ``count`` rows of ``features`` [N, D] picked greedily, each the farthest
    (Euclidean) from those picked before; the first at random."""
    rng = np.random.default_rng(seed)
    picked = [int(rng.integers(len(features)))]
    distance = np.linalg.norm(features - features[picked[0]], axis=1)
    while len(picked) < count:
        nxt = int(np.argmax(distance))
        picked.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(features - features[nxt], axis=1))
    return picked


def select_replay(structures: Sequence[Structure], count: int | None, selection: str, elements: Sequence[int],
                  r_max: float, seed: int = 0) -> list[Structure]:
    """``count`` structures (None: all) of those made of ``elements``, by ``selection``."""
    if selection not in SELECTIONS:
        raise ValueError(f"finetune.replay.selection must be one of {SELECTIONS}, got {selection!r}")
    pool = within_elements(structures, elements)
    if not pool:
        names = [chemical_symbols[z] for z in elements]
        raise DataError(f"finetune.replay: no replay structure is made only of the run's elements {names}")
    if count is None or count >= len(pool):
        return list(pool)
    if selection == "first":
        return list(pool[:count])
    if selection == "random":
        order = np.random.default_rng(seed).permutation(len(pool))[:count]
        return [pool[k] for k in sorted(order)]
    features = np.stack([descriptor(s, elements, r_max) for s in pool])
    return [pool[k] for k in farthest_points(features, count, seed)]


@torch.no_grad()
def pseudo_label(potential: Potential, structures: Sequence[Structure], batch_size: int = 16) -> list[Structure]:
    """Copies of ``structures`` with the potential's energy, forces and (periodic cells) stress as labels."""
    device = potential.e0s.device
    was_training = potential.training
    potential.eval()
    labelled = []
    try:
        for start in range(0, len(structures), batch_size):
            chunk = structures[start : start + batch_size]
            graphs = [structure_to_graph(s, potential.r_max) for s in chunk]
            batch = Batch.from_data_list(graphs).to(device)
            with torch.enable_grad():
                out = potential(batch, compute_forces=True, compute_stress=True)
            forces = out["forces"].detach().double().cpu().numpy()
            offsets = np.cumsum([0] + [s.n_atoms for s in chunk])
            for k, s in enumerate(chunk):
                stress = out["stress"][k].detach().double().cpu().numpy() if s.is_periodic else None
                labelled.append(dataclasses.replace(
                    s, energy=float(out["energy"][k]), forces=forces[offsets[k] : offsets[k + 1]], stress=stress,
                    source=f"{s.source} (labelled by the foundation)"))
    finally:
        potential.train(was_training)
    return labelled


def replay_structures(potential: Potential, files: Sequence[str], count: int | None, selection: str, labels: str,
                      seed: int = 0, format: str = "auto", reader: dict | None = None) -> list[Structure]:
    """The replay set of a run: read, filtered to the potential's elements, selected, labelled."""
    if labels not in LABELS:
        raise ValueError(f"finetune.replay.labels must be one of {LABELS}, got {labels!r}")
    if not files:
        raise DataError("finetune.replay.files: give the files of the foundation's domain to replay")
    structures = [s for f in files for s in read_structures(f, format, **(reader or {}))]
    chosen = select_replay(structures, count, selection, potential.elements.tolist(), potential.r_max, seed)
    if labels == "foundation":
        return pseudo_label(potential, chosen)
    unlabelled = next((s for s in chosen if s.energy is None or s.forces is None), None)
    if unlabelled is not None:
        raise DataError(f"{unlabelled.source}: finetune.replay.labels=dft needs energies and forces in the replay "
                        "files; labels=foundation labels them with the foundation instead")
    return chosen
