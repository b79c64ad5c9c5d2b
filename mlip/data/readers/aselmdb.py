"""fairchem's ``.aselmdb``: an ASE database stored in LMDB (OC20/OC22/OMat/OMol releases).

Each record is the zlib-compressed JSON of an ASE database row under its ascii id
(the layout of the ase-db-backends package); ``nextid``, ``metadata`` and
``deleted_ids`` are bookkeeping keys. A path may be one file or a folder of them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from ase.db.row import AtomsRow
from ase.io.jsonio import decode

from mlip.data.readers.ase_db import structure_from_row
from mlip.data.readers.base import SkippedRecords, check_on_error, convert_record
from mlip.data.readers.lmdb_files import lmdb_files, open_lmdb, read_record, sorted_record_keys
from mlip.data.structure import DataError, Structure

BOOKKEEPING_KEYS = {b"nextid", b"metadata", b"deleted_ids"}


def _decode_row(raw: bytes, source: str) -> AtomsRow:
    try:
        return AtomsRow(decode(zlib.decompress(raw).decode()))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: not a compressed ASE row ({type(exc).__name__}: {exc})") from exc


def iter_aselmdb(
    path: str | Path,
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
    **keys: str | None,
) -> Iterator[Structure]:
    """Yield the rows of one ``.aselmdb`` file or of every one in a folder, in id order.

    ``keys`` name the labels (`structure_from_atoms`: energy_key, forces_key, ...).
    """
    check_on_error(on_error)
    for file in lmdb_files(path, "*.aselmdb"):
        env = open_lmdb(file)
        try:
            with env.begin() as txn:
                deleted_raw = txn.get(b"deleted_ids")
                deleted = set(json.loads(zlib.decompress(deleted_raw))) if deleted_raw else set()
                for key in sorted_record_keys(txn, file, BOOKKEEPING_KEYS):
                    if int(key) in deleted:
                        continue
                    source = f"{file}#{key.decode()}"
                    raw = read_record(txn, key, source)
                    structure = convert_record(
                        source, lambda: structure_from_row(_decode_row(raw, source), source, **keys), on_error, skipped
                    )
                    if structure is not None:
                        yield structure
        finally:
            env.close()
