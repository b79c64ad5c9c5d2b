"""Opening LMDB files read-only and walking their numbered records, with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lmdb

from mlip.data.structure import DataError


def lmdb_files(path: str | Path, pattern: str) -> list[Path]:
    """``path`` itself if it is a file, else the files matching ``pattern`` in that folder tree, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.rglob(pattern))
        if not files:
            raise DataError(f"{path}: folder holds no {pattern} files")
        return files
    raise DataError(f"{path}: no such file or folder")


def open_lmdb(file: Path) -> lmdb.Environment:
    """A read-only environment on a single-file LMDB (``subdir=False``).

    A truncated file is refused here: LMDB maps the file into memory, and reading a
    page past its end would kill the process (SIGBUS) instead of raising.
    """
    try:
        env = lmdb.open(str(file), subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)
    except lmdb.Error as exc:
        raise DataError(f"{file}: cannot open as an LMDB file ({type(exc).__name__}: {exc})") from exc
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = file.stat().st_size
    if size < needed:
        env.close()
        raise DataError(f"{file}: LMDB file is truncated ({size} bytes, its header needs {needed}); download it again")
    return env


def sorted_record_keys(txn: lmdb.Transaction, file: Path, bookkeeping: Iterable[bytes] = ()) -> list[bytes]:
    """The integer keys of the records, in numeric order; ``bookkeeping`` keys are left out."""
    skip = set(bookkeeping)
    try:
        keys = [key for key in txn.cursor().iternext(keys=True, values=False) if key not in skip]
    except lmdb.Error as exc:
        raise DataError(f"{file}: LMDB is damaged or truncated ({type(exc).__name__}: {exc})") from exc
    numbered = [key for key in keys if key.isdigit()]
    if len(numbered) != len(keys):
        odd = next(key for key in keys if not key.isdigit())
        raise DataError(f"{file}: unexpected record key {odd!r}; records are expected under integer keys")
    return sorted(numbered, key=int)


def read_record(txn: lmdb.Transaction, key: bytes, source: str) -> bytes:
    """The bytes stored under ``key``; a damaged page is a `DataError` naming ``source``."""
    try:
        raw = txn.get(key)
    except lmdb.Error as exc:
        raise DataError(f"{source}: LMDB record unreadable, file damaged or truncated ({exc})") from exc
    if raw is None:
        raise DataError(f"{source}: record missing")
    return bytes(raw)
