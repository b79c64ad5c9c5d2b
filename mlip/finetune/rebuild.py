"""A `Potential` rebuilt with fewer elements or other heads, predicting exactly what it did.

Element-indexed weights (the node embedding, element-dependent linears and products, the
non-linear block's element embeddings) are cut to the kept elements. Where e3nn normalises
a path by its fan-in, and the element count is part of that fan-in, the kept weights are
multiplied by the ratio of the old path weight to the new one, so that every kept element's
output is unchanged to round-off. Readouts get one block per new head, copied from the
head it starts from (`LinearReadout.head_state`, `NonLinearReadout.head_state`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from ase.data import chemical_symbols
from e3nn import o3
from torch import nn

from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.nn.blocks import LinearReadout, NonLinearReadout


class RebuildError(ValueError):
    """The model has a part whose element- or head-indexed weights cannot be carried over."""


def _cut_e3nn_weight(old: nn.Module, new: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """The flat ``weight`` of e3nn module ``new`` from ``old``'s: each path's block cut along the
    axis whose size changed (the element axis) and rescaled by old / new path weight."""
    blocks, start = [], 0
    for ins_old, ins_new in zip(old.instructions, new.instructions):
        if not getattr(ins_old, "has_weight", True):
            continue
        shape_old, shape_new = tuple(ins_old.path_shape), tuple(ins_new.path_shape)
        size = int(torch.tensor(shape_old).prod())
        block = old.weight.detach()[start : start + size].view(shape_old)
        start += size
        for axis, (a, b) in enumerate(zip(shape_old, shape_new)):
            if a != b:
                block = block.index_select(axis, keep)
        blocks.append((block * (ins_old.path_weight / ins_new.path_weight)).reshape(-1))
    return torch.cat(blocks) if blocks else old.weight.detach()


def _carried_state(old: nn.Module, new: nn.Module, keep: torch.Tensor, head_sources: list[int] | None,
                   name: str) -> dict[str, torch.Tensor]:
    """The entries of ``new``'s own (non-recursive) state that differ in shape from ``old``'s."""
    if head_sources is not None and isinstance(old, (LinearReadout, NonLinearReadout)):
        return old.head_state(head_sources)
    own = {k: v for k, v in new.state_dict().items() if "." not in k}
    previous = {k: v for k, v in old.state_dict().items() if "." not in k}
    changed = {k for k, v in own.items() if k in previous and previous[k].shape != v.shape}
    if not changed:
        return {}
    if isinstance(old, (o3.Linear, o3.TensorProduct)) and changed == {"weight"}:
        return {"weight": _cut_e3nn_weight(old, new, keep)}
    parameters = dict(new.named_parameters(recurse=False))
    if isinstance(old, nn.ParameterDict) and name.endswith("weights"):  # SymmetricContraction.weights: [Z, ...]
        return {k: previous[k].index_select(0, keep) for k in changed}
    if not any(k in parameters for k in changed):  # buffers made from the atomic numbers (covalent radii, ZBL)
        return {k: own[k] for k in changed}
    raise RebuildError(f"{name or 'the model'} ({type(old).__name__}): cannot carry its weights "
                       f"{sorted(changed)} to other elements or heads")


def rebuild_potential(
    potential: Potential,
    elements: Sequence[int] | None = None,
    heads: Sequence[tuple[str, int]] | None = None,
) -> Potential:
    """``potential`` with only ``elements`` (atomic numbers, a subset of its own) and/or the
    heads ``heads`` (name, index of the existing head it starts from; an existing single head
    is index 0). Predictions of a kept element and a kept head are unchanged."""
    old_elements = potential.elements.tolist()
    elements = old_elements if elements is None else sorted(int(z) for z in elements)
    missing = [chemical_symbols[z] for z in elements if z not in old_elements]
    if missing:
        raise RebuildError(f"the model knows {[chemical_symbols[z] for z in old_elements]}, not {missing}")
    keep = torch.tensor([old_elements.index(z) for z in elements], dtype=torch.long)
    spec = copy.deepcopy(potential.model_spec)
    kwargs = spec["kwargs"]
    kwargs["num_elements"] = len(elements)
    if kwargs.get("atomic_numbers") is not None:
        kwargs["atomic_numbers"] = list(elements)
    old_heads = list(potential.heads) or [None]
    if heads is not None:
        if "num_heads" not in kwargs and not hasattr(potential.model, "num_heads"):
            raise RebuildError(f"{spec['target']} has no heads: only MACE-family models take several")
        sources = [int(index) for _, index in heads]
        if any(not 0 <= s < len(old_heads) for s in sources):
            raise RebuildError(f"heads {list(heads)}: the model has {len(old_heads)} head(s)")
        kwargs["num_heads"] = len(heads)
        if len(heads) > 1:
            spec["heads"] = [str(name) for name, _ in heads]
        else:
            spec.pop("heads", None)
    else:
        sources = None

    dtype = potential.dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        e0_table = potential.head_e0s if potential.heads else potential.e0s[None]
        scale_table = potential.head_scale if potential.heads else potential.scale[None]
        shift_table = potential.head_shift if potential.heads else potential.shift[None]
        first = 0 if sources is None else sources[0]
        if sources is None and potential.heads:
            first = potential.heads.index(potential.head)
        rebuilt = Potential(build_model(spec), elements, e0_table[first, keep].tolist(), float(scale_table[first]),
                            float(shift_table[first]), model_spec=spec)
    finally:
        torch.set_default_dtype(previous)

    state = {k: v for k, v in potential.state_dict().items() if k in rebuilt.state_dict()}
    old_modules = dict(potential.named_modules())
    whole: list[str] = []  # modules carried as a whole (readouts, for new heads): their children are done
    for name, module in rebuilt.named_modules():
        if name in ("", "model") or name not in old_modules or any(name.startswith(w) for w in whole):
            continue
        carried = _carried_state(old_modules[name], module, keep, sources, name)
        if sources is not None and isinstance(module, (LinearReadout, NonLinearReadout)):
            whole.append(f"{name}.")
        state.update({f"{name}.{k}": v for k, v in carried.items()})
    own = rebuilt.state_dict()
    for key in ("elements", "species_of_z", "e0s", "scale", "shift"):
        state[key] = own[key]
    if rebuilt.heads:
        rows = sources if sources is not None else list(range(len(old_heads)))
        state["head_e0s"] = e0_table[rows][:, keep].clone()
        state["head_scale"], state["head_shift"] = scale_table[rows].clone(), shift_table[rows].clone()
        if sources is not None:  # the first new head is the one predicted
            state["model.head"] = torch.zeros(1, dtype=torch.long)
    elif "model.head" in state:
        del state["model.head"]
    parameters = {k for k, _ in rebuilt.named_parameters()}
    for key, value in own.items():  # buffers derived from the shapes (e3nn's output masks): the new ones
        if key not in parameters and key in state and state[key].shape != value.shape:
            state[key] = value
    mismatched = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if mismatched:
        raise RebuildError(f"cannot carry {mismatched[:3]} to {len(elements)} elements / {len(old_heads)} -> "
                           f"{len(sources or old_heads)} heads")
    rebuilt.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)
    return rebuilt.to(device=potential.e0s.device)
