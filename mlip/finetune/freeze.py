"""Freezing named blocks of a model: ``finetune.freeze=[embedding, interactions.0, ...]``."""

from __future__ import annotations

from collections.abc import Sequence

from mlip.models.potential import Potential


def blocks(potential: Potential) -> list[str]:
    """The names a freeze list or lr factor can take: each child of the model and each layer of
    its layer lists (``embedding``, ``interactions``, ``interactions.0``, ``readouts.1``, ...)."""
    names = []
    for name, child in potential.model.named_children():
        if not any(p.numel() for p in child.parameters()):
            continue
        names.append(name)
        if hasattr(child, "__len__") and not hasattr(child, "keys"):
            names += [f"{name}.{k}" for k in range(len(child))]
    return names


def freeze(potential: Potential, names: Sequence[str]) -> int:
    """Stop training the parameters of the blocks ``names`` (see `blocks`); returns how many
    parameters (scalars) that froze. An unknown name is refused, listing the known ones."""
    known = blocks(potential)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"finetune.freeze: no block {unknown} in this model; its blocks are {known}")
    frozen = 0
    for name, parameter in potential.model.named_parameters():
        if any(name == block or name.startswith(f"{block}.") for block in names):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen
