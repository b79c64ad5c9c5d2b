"""A fine-tuning run put together: the foundation cut to the data's elements, its E0s, its heads
(with replay data) and its frozen blocks; called by ``mlip-train`` when ``model=pretrained``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip.data.structure import DataError
from mlip.finetune.e0s import MODES as E0_MODES
from mlip.finetune.e0s import estimated_e0s, set_e0s
from mlip.finetune.freeze import freeze
from mlip.finetune.rebuild import rebuild_potential
from mlip.finetune.replay import replay_structures
from mlip.models.potential import Potential

log = logging.getLogger("mlip.finetune")
FOUNDATION_HEAD = "foundation"


def check_elements(potential: Potential, datamodule, elements: Sequence[int]) -> None:
    """Refuse elements the foundation lacks, naming one structure (file and record) that holds each."""
    known = set(potential.elements.tolist())
    missing = [z for z in elements if z not in known]
    if not missing:
        return
    where = ""
    for structure in (getattr(datamodule, "splits", None) or {}).get("train", []):
        if set(structure.atomic_numbers.tolist()) & set(missing):
            where = f"{structure.source}: "
            break
    names = [chemical_symbols[z] for z in missing]
    raise DataError(f"{where}element(s) {names} are not in the foundation model (it knows "
                    f"{[chemical_symbols[z] for z in sorted(known)]}): fine-tune on data of those elements only, "
                    "or start from a model that has them")


def _mark(graphs: Sequence, head: int, weight: float) -> None:
    for graph in graphs:
        graph.head = torch.tensor([head], dtype=torch.long)
        graph.weight = torch.tensor([weight], dtype=torch.float64)


def prepare_finetuning(potential: Potential, datamodule, e0s: Any, settings: Mapping[str, Any] | None) -> Potential:
    """The potential a fine-tuning run trains, and the data module's training set with replay.

    Args:
        potential: the foundation (`mlip.finetune.pretrained.load_pretrained`), single-head.
        datamodule: set up for ``fit``; with replay, its training split gains the replay graphs.
        e0s: ``data.e0s`` of the run: ``foundation``, ``estimated``, or anything the data module
            took (a file, a mapping, ``least_squares``): then its statistics' E0s.
        settings: ``finetune`` of the config: ``elements``, ``freeze``, ``head``, ``replay``.
    """
    settings = dict(settings or {})
    statistics = datamodule.statistics
    replay = settings.get("replay")
    head = str(settings.get("head") or "finetune")
    if replay and head == FOUNDATION_HEAD:
        raise ValueError(f"finetune.head={head!r} is the replay head's name; pick another")
    structures, validation = [], []
    if replay:  # chosen and labelled by the whole foundation: a cut one predicts the same on its elements
        structures = replay_structures(
            potential, list(replay.get("files") or []), replay.get("count"), replay.get("selection", "random"),
            replay.get("labels", "foundation"), int(replay.get("seed", 0)), replay.get("format", "auto"),
            replay.get("reader"))
        held = float(replay.get("validation") or 0.0)  # a share of the pool scored, not trained on
        if not 0.0 <= held < 1.0:
            raise ValueError(f"finetune.replay.validation={held}: the share of the replay pool held out, in [0, 1)")
        count = int(round(held * len(structures)))
        structures, validation = (structures[:-count], structures[-count:]) if count else (structures, [])
        ratio = replay.get("ratio")
        if ratio is not None:
            structures = structures[: max(1, int(round(float(ratio) * len(datamodule.datasets["train"]))))]

    # the data's elements, and the replay structures' (which the foundation head keeps predicting)
    data_elements = set(statistics.elements) | {int(z) for s in structures for z in s.atomic_numbers}
    elements = sorted(int(z) for z in (settings.get("elements") or data_elements))
    check_elements(potential, datamodule, elements)
    unused = sorted(data_elements - set(elements))
    if unused:
        raise DataError(f"finetune.elements={elements} leaves out {[chemical_symbols[z] for z in unused]}, "
                        "which the training (or replay) data holds")
    own_e0s = dict(zip(potential.elements.tolist(), potential.e0s.tolist()))
    if elements != potential.elements.tolist():
        log.info("elements cut from %s to %s", potential.elements.tolist(), elements)
        potential = rebuild_potential(potential, elements)
    if elements != list(statistics.elements):  # the data module checks each batch's elements against these
        given = dict(zip(statistics.elements, statistics.e0s))
        statistics.elements = elements
        statistics.e0s = [given.get(z, own_e0s[z]) for z in elements]

    replayed = 0
    if replay:
        n_train = len(datamodule.datasets["train"])
        potential = rebuild_potential(potential, heads=[(FOUNDATION_HEAD, 0), (head, 0)])
        potential.select_head(head)
        for split in ("train", "val", "test"):
            _mark(datamodule.datasets.get(split, []), 1, 1.0)
        graphs = datamodule.add_structures(structures, "train")
        _mark(graphs, 0, float(replay.get("weight", 1.0)))
        replayed = len(graphs)
        # held-out replay structures: the foundation head's validation curve (val_foundation_*)
        _mark(datamodule.add_structures(validation, "val"), 0, float(replay.get("weight", 1.0)))
        log.info("replay: %d structures (head %r, loss weight %s) beside %d of the new data (head %r); "
                 "%d more held out for validation", replayed, FOUNDATION_HEAD, replay.get("weight", 1.0), n_train,
                 head, len(validation))

    if isinstance(e0s, str) and e0s in E0_MODES:
        if e0s == "estimated":
            train = getattr(datamodule, "splits", {}).get("train")
            if train is None:
                raise DataError("data.e0s=estimated needs the training structures in memory (data=extxyz-style configs)")
            real = train[: len(train) - replayed]  # the new data only
            values = estimated_e0s(potential, real)
            set_e0s(potential, values)
            log.info("E0s estimated: %s", dict(zip(elements, np.round(values, 6).tolist())))
    else:  # the data module's E0s (a file, a mapping, least squares on the new data), aligned above
        set_e0s(potential, statistics.e0s)

    blocks = list(settings.get("freeze") or [])
    if blocks:
        log.info("frozen: %s (%d parameters)", blocks, freeze(potential, blocks))
    return potential
