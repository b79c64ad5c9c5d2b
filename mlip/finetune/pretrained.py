"""The starting point of a fine-tuning run: a model file, one head of it, its cutoff.

    mlip-train finetune=naive model.path=foundation.safetensors data=extxyz data.train_files=mine.xyz

``model=pretrained`` (which the ``finetune`` configs select) instantiates `load_pretrained`
instead of building a model: the architecture, r_max and avg_num_neighbors come from the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mlip.export import load_potential
from mlip.finetune.rebuild import rebuild_potential
from mlip.models.potential import Potential


class PretrainedError(ValueError):
    """A fine-tuning run's model file or its options do not fit together."""


def load_pretrained(path: str | os.PathLike, head: str | None = None, r_max: float | None = None,
                    dtype: str = "float64") -> Potential:
    """The single-head `Potential` a fine-tuning run starts from.

    Args:
        path: an mlip model file (``.safetensors``), a training checkpoint (``.ckpt``), or a
            mace-torch ``.model`` file (converted on the way, `mlip.convert.mace_torch`).
        head: of a multi-head file, the head to start from (default: the file's selected head).
        r_max: the run's cutoff, Å, if the config names one: it must be the file's.
        dtype: the weights' dtype while the run is set up (the trainer casts them after).
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"model.path={path}: no such model file")
    if path.suffix == ".model":
        from mlip.convert.mace_torch import convert_mace_torch

        potential = convert_mace_torch(path, "all").to(getattr(torch, dtype))
    else:
        potential = load_potential(path, dtype=dtype)
    potential.train()
    if r_max is not None and abs(float(r_max) - potential.r_max) > 1e-9:
        raise PretrainedError(f"model.r_max={r_max} contradicts {path}, whose cutoff is {potential.r_max} Å: "
                              "leave model.r_max unset (it comes from the file)")
    if potential.heads:
        name = head or potential.head
        if name not in potential.heads:
            raise PretrainedError(f"model.head={name}: {path} has heads {potential.heads}")
        return rebuild_potential(potential, heads=[(name, potential.heads.index(name))])
    if head is not None:
        raise PretrainedError(f"model.head={head}: {path} has a single head; leave model.head unset")
    return potential

