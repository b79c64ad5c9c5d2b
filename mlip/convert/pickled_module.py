"""A pickled ``nn.Module`` (a ``torch.save`` archive) read without running its pickle.

A pickle names classes and functions that unpickling would import and call. Here no
name is imported: each becomes an inert `Record` that keeps what the pickle stored (its
constructor arguments and its state), tensors are rebuilt from the archive's storages,
and only a few plain containers are real (``OrderedDict``, ``set``). So a model file of
another framework can be read without that framework installed, and a file that carries
a payload runs none of it.
"""

from __future__ import annotations

import codecs
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
MAX_PICKLE_BYTES = 64 * 2**20  # the pickle of a module holds structure, not weights


class PickledModuleError(ValueError):
    """A file that is not a readable torch.save archive of a module."""


class Record:
    """Stands in for any pickled object of a class we do not import.

    ``kind`` is the pickled class's ``module.name``; ``args`` the arguments it was rebuilt
    with; ``state`` what ``__setstate__`` would have received (a module's ``__dict__``).
    """

    kind = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<record {self.kind}>"

    # list and dict subclasses are filled by APPENDS / SETITEMS after they are made
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("mapping", {})[key] = value

    # what a pickled nn.Module keeps in its state
    def _part(self, name: str) -> dict:
        return dict((self.state or {}).get(name) or {}) if isinstance(self.state, dict) else {}

    @property
    def parameters(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._part("_parameters").items() if v is not None}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self._part("_buffers").items() if v is not None}

    @property
    def children(self) -> dict[str, Record]:
        return {k: v for k, v in self._part("_modules").items() if v is not None}

    def child(self, name: str) -> Record:
        children = self.children
        if name not in children:
            raise PickledModuleError(f"{self.kind} has no submodule {name!r} (it has {sorted(children)})")
        return children[name]

    def attr(self, name: str, default: Any = ...) -> Any:
        state = self.state if isinstance(self.state, dict) else {}
        if name in state:
            return state[name]
        if default is ...:
            raise PickledModuleError(f"{self.kind} has no attribute {name!r}")
        return default

    def has(self, name: str) -> bool:
        return isinstance(self.state, dict) and name in self.state

    def tensor(self, name: str) -> torch.Tensor:
        """A parameter or buffer by name."""
        found = {**self.buffers, **self.parameters}
        if name not in found:
            raise PickledModuleError(f"{self.kind} has no parameter or buffer {name!r} (it has {sorted(found)})")
        return found[name]


_RECORD_CLASSES: dict[str, type[Record]] = {}


def record_class(module: str, name: str) -> type[Record]:
    """The inert stand-in of ``module.name`` (one class per name, so ``isinstance`` works)."""
    kind = f"{module}.{name}"
    if kind not in _RECORD_CLASSES:
        _RECORD_CLASSES[kind] = type(name, (Record,), {"kind": kind, "__module__": __name__})
    return _RECORD_CLASSES[kind]


class _Storage:
    """A storage type named in a persistent id; carries only its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *args: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise PickledModuleError("a tensor refers to something that is not a storage")
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise PickledModuleError(f"a tensor of size {tuple(size)} reaches past its storage ({storage.numel()} items)")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *args: Any) -> torch.Tensor:
    return data


_REAL = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REAL:
            return _REAL[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(STORAGE_DTYPES[name])
        return record_class(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise PickledModuleError(f"{self.source}: unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise PickledModuleError(f"{self.source}: storage {key!r} is missing from the archive") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if info.file_size != numel * itemsize:
                raise PickledModuleError(
                    f"{self.source}: storage {key!r} holds {info.file_size} bytes, its header says {numel} x {itemsize}"
                )
            raw = bytearray(self.archive.read(name))
            self.storages[key] = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
        return self.storages[key]


def read_pickled_module(path: str | Path) -> Record:
    """The top-level record of a ``torch.save``'d module at ``path`` (tensors real, classes inert)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PickledModuleError(f"{path}: not a torch.save archive ({exc})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise PickledModuleError(f"{path}: not a torch.save archive (no single data.pkl)")
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise PickledModuleError(f"{path}: data.pkl is {info.file_size} bytes, too large for a module's structure")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            top = _Unpickler(archive.read(pickles[0]), archive, prefix, str(path)).load()
        except PickledModuleError:
            raise
        except Exception as exc:  # a damaged or foreign pickle
            raise PickledModuleError(f"{path}: cannot read its pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(top, Record):
        raise PickledModuleError(f"{path}: holds a {type(top).__name__}, not a pickled module")
    return top
