"""The self-describing model file: safetensors weights plus JSON metadata.

The file holds the model spec (registered class and constructor arguments), the
element list, E0s and statistics, and the EMA weights. Loading never unpickles:
weights come from safetensors and the class from `mlip.models.registry`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mlip.atomic import file_mode
from mlip.models.potential import Potential
from mlip.models.registry import build_model

FORMAT = "mlip-model/1"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


class ModelFileError(ValueError):
    """A model file that cannot be read: the message names it and says what is wrong."""


def check_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header of ``path``, checked against the file size before anything
    trusts it: 8 bytes of length, then that many bytes of JSON, then the tensors."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a model file ({size} bytes, too short for a safetensors header)")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ModelFileError(f"{path}: not a model file (its header claims {length} bytes; the file has {size})")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a model file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a model file (header is a {type(header).__name__})")
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= size - 8 - length):
            raise ModelFileError(f"{path}: tensor {key!r} lies outside the file (damaged or truncated)")
    return header


def _is_codegen_constant(key: str) -> bool:
    """e3nn's fx-compiled tensor products gain constants as buffers when deep-copied (the
    EMA copy, for wide ℓ = 3 products); the constructor rebuilds them, so they are not weights."""
    return "._tensor_constant" in key


def save_model(potential: Potential, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``potential`` to ``path`` (atomically). ``extra`` adds JSON-able metadata."""
    if potential.model_spec is None:
        raise ValueError("this Potential has no model_spec; build it through mlip.models.registry to export it")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in potential.state_dict().items()
               if not _is_codegen_constant(k)}
    metadata = {
        "format": FORMAT,
        "model_spec": json.dumps(potential.model_spec),
        "elements": json.dumps([int(z) for z in potential.elements]),
        "dtype": str(potential.dtype).removeprefix("torch."),
        "extra": json.dumps(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, file_mode())  # safetensors writes 0600; a shared cluster's group reads the model too
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a model file; `ModelFileError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    raw = check_header(path).get("__metadata__") or {}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise ModelFileError(f"{path}: not an mlip model file (format {found!r}, expected {FORMAT!r})")
    try:
        return {k: (json.loads(v) if k in ("model_spec", "elements", "extra") else v) for k, v in raw.items()}
    except (TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: damaged metadata ({exc})") from None


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> Potential:
    """Rebuild the `Potential` stored at ``path``; ``dtype`` defaults to the stored one."""
    path = Path(path)
    metadata = read_metadata(path)  # FileNotFoundError or ModelFileError first
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        potential = potential_from_state(metadata["model_spec"], tensors)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or getattr(torch, metadata["dtype"])
    except Exception as exc:  # noqa: BLE001 - safetensors, a spec or weights that do not fit: all name the file
        raise ModelFileError(f"{path}: cannot rebuild the model ({type(exc).__name__}: {str(exc)[:300]})") from None
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise ModelFileError(f"{path}: weight {bad} holds NaN or inf")
    return potential.to(device=device, dtype=dtype).eval()


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def potential_from_state(model_spec: dict[str, Any], state: dict[str, torch.Tensor]) -> Potential:
    """Build a `Potential` from its spec and a state dict (keys as in ``Potential.state_dict()``).

    The modules are built in the dtype of the stored weights, so loading loses no precision.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(state["scale"].dtype)
    try:
        potential = Potential(
            build_model(model_spec),
            elements=state["elements"].tolist(),
            e0s=state["e0s"].tolist(),
            scale=float(state["scale"]),
            shift=float(state["shift"]),
            model_spec=model_spec,
        )
    finally:
        torch.set_default_dtype(previous)
    potential.load_state_dict({k: v for k, v in state.items() if not _is_codegen_constant(k)}, strict=True)
    return potential


def potential_from_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> Potential:
    """The `Potential` of a Lightning checkpoint written by `PotentialModule` (EMA weights by default)."""
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for files that are not checkpoints
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "mlip_model_spec" not in checkpoint:
        raise ModelFileError(f"{path}: not a checkpoint written by mlip-train")
    prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in checkpoint["state_dict"]) else "potential."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return potential_from_state(checkpoint["mlip_model_spec"], state)


def load_potential(path: str | os.PathLike, device: str = "cpu", dtype: str = "float64") -> Potential:
    """A model file (``.safetensors``) or a training checkpoint (``.ckpt``, EMA weights), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file or checkpoint")
    if path.suffix == ".ckpt":
        return potential_from_checkpoint(path).to(device=device, dtype=getattr(torch, dtype)).eval()
    return load_model(path, device=device, dtype=dtype)
