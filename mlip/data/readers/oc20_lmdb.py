"""The legacy OC20/OC22 LMDB layout: pickled torch_geometric ``Data`` records.

S2EF files hold ``pos``, ``cell`` [1, 3, 3], ``atomic_numbers`` (float), ``natoms``,
``tags``, ``fixed``, ``y`` (energy, eV), ``force`` (eV/Å), ``sid``, ``fid`` under
keys ``"0"``, ``"1"``, ...; IS2RE files hold ``y_init`` / ``y_relaxed`` and
``pos_relaxed`` instead. Whether ``y`` is a total energy (OC22) or an adsorption
energy referenced to the clean slab and gas-phase molecules (OC20) is a property of
the dataset, not of the file: the dataset config says which.

A pickle can run arbitrary code, so records are loaded by `RecordUnpickler`, which
admits only the handful of types these records are made of and refuses anything
else. Both torch_geometric layouts are read: attributes in ``_store`` (2.x) and
directly in ``__dict__`` (the 1.x versions the public files were written with).
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._utils

try:  # numpy >= 2 moved its pickle helpers
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

from mlip.data.readers.base import SkippedRecords, check_on_error, convert_record
from mlip.data.readers.lmdb_files import lmdb_files, open_lmdb, read_record, sorted_record_keys
from mlip.data.structure import DataError, Structure

BOOKKEEPING_KEYS = {b"length"}


class _PickledObject:
    """Stands in for torch_geometric's ``Data`` and ``GlobalStorage``: keeps the pickled state as-is."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _PickledClass:
    """Stands in for classes stored by reference only (``Data._edge_attr_cls``)."""


def _storage_from_bytes(data: bytes):
    # torch's own version calls torch.load(weights_only=False), which would reopen the hole.
    return torch.load(io.BytesIO(data), weights_only=True)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_geometric.data.data", "Data"): _PickledObject,
    ("torch_geometric.data.storage", "GlobalStorage"): _PickledObject,
    ("torch_geometric.data.data", "DataEdgeAttr"): _PickledClass,
    ("torch_geometric.data.data", "DataTensorAttr"): _PickledClass,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how pickle protocol 2 stores bytes

    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RecordUnpickler(pickle.Unpickler):
    """Unpickles OC20/OC22 records and nothing else."""

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle {module}.{name}; an OC20/OC22 record holds only "
                f"torch_geometric Data, tensors and arrays, so this LMDB is not one (or is unsafe)"
            ) from None


def unpickle_record(data: bytes, source: str) -> dict[str, Any]:
    """The attribute mapping of one pickled ``Data`` record (either torch_geometric layout)."""
    try:
        record = RecordUnpickler(data, source).load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: cannot unpickle record ({type(exc).__name__}: {exc})") from exc
    state = getattr(record, "state", None)
    if not isinstance(state, dict):
        raise DataError(f"{source}: record is a {type(record).__name__}, not a torch_geometric Data")
    store = state.get("_store")
    if store is not None:  # torch_geometric >= 2.0
        return dict(store.state["_mapping"])
    return {k: v for k, v in state.items() if not k.startswith("_")}  # 1.x: attributes in __dict__


def _array(value: Any, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def structure_from_record(
    fields: dict[str, Any], source: str, energy_field: str | None, forces_field: str | None, positions_field: str
) -> Structure:
    """Map the fields of an OC20/OC22 record onto a `Structure` (eV, Å, eV/Å as stored)."""
    for name in (positions_field, "atomic_numbers", "cell"):
        if name not in fields:
            raise DataError(f"{source}: record has no {name!r} field (fields: {sorted(fields)})")
    for name in (energy_field, forces_field):
        if name is not None and name not in fields:
            raise DataError(f"{source}: record has no {name!r} label (fields: {sorted(fields)})")
    numbers_float = _array(fields["atomic_numbers"], np.float64)
    numbers = np.rint(numbers_float).astype(np.int64)
    if not np.array_equal(numbers, numbers_float):
        raise DataError(f"{source}: atomic_numbers are not whole numbers")
    n = numbers.shape[0]
    if "natoms" in fields and int(_array(fields["natoms"], np.int64).reshape(-1)[0]) != n:
        raise DataError(f"{source}: natoms={int(_array(fields['natoms'], np.int64).reshape(-1)[0])} but {n} atomic numbers")
    pbc = _array(fields["pbc"], bool).reshape(-1) if "pbc" in fields else np.ones(3, dtype=bool)
    info = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in fields.items() if k in ("sid", "fid")}
    return Structure(
        atomic_numbers=numbers,
        positions=_array(fields[positions_field], np.float64),
        cell=_array(fields["cell"], np.float64).reshape(3, 3),
        pbc=pbc,
        energy=None if energy_field is None else float(_array(fields[energy_field], np.float64).reshape(())),
        forces=None if forces_field is None else _array(fields[forces_field], np.float64),
        tags=_array(fields["tags"], np.int64) if "tags" in fields else None,
        fixed=_array(fields["fixed"], bool) if "fixed" in fields else None,
        source=source,
        info=info,
    )


def iter_oc20_lmdb(
    path: str | Path,
    energy_field: str | None = "y",
    forces_field: str | None = "force",
    positions_field: str = "pos",
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
) -> Iterator[Structure]:
    """Yield the records of one legacy ``.lmdb`` file or of every one in a folder (OC20 S2EF splits).

    IS2RE: ``energy_field="y_relaxed"``, ``forces_field=None``, and ``positions_field``
    ``"pos"`` (initial) or ``"pos_relaxed"``.
    """
    check_on_error(on_error)
    for file in lmdb_files(path, "*.lmdb"):
        env = open_lmdb(file)
        try:
            with env.begin() as txn:
                for key in sorted_record_keys(txn, file, BOOKKEEPING_KEYS):
                    source = f"{file}#{key.decode()}"
                    raw = read_record(txn, key, source)
                    structure = convert_record(
                        source,
                        lambda: structure_from_record(
                            unpickle_record(raw, source), source, energy_field, forces_field, positions_field
                        ),
                        on_error,
                        skipped,
                    )
                    if structure is not None:
                        yield structure
        finally:
            env.close()
