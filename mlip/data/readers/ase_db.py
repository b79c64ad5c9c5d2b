"""ASE databases: SQLite/JSON ``.db`` files (OC22 fine-tuning sets, user collections).

Rows become `Structure` records named ``path#id=N``; the row's key-value pairs and
``data`` go to ``Structure.info``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ase.db
from ase.db.row import AtomsRow

from mlip.data.readers.atoms import structure_from_atoms
from mlip.data.readers.base import SkippedRecords, check_on_error, convert_record
from mlip.data.structure import DataError, Structure


def structure_from_row(row: AtomsRow, source: str, **keys: str | None) -> Structure:
    """One ASE database row (with its calculator results) as a `Structure`."""
    atoms = row.toatoms(add_additional_information=False)
    atoms.info.update(row.get("key_value_pairs", {}))
    atoms.info.update(row.get("data", {}) or {})
    return structure_from_atoms(atoms, source, **keys)


def iter_ase_db(
    path: str | Path,
    selection: str | None = None,
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
    **keys: str | None,
) -> Iterator[Structure]:
    """Yield the rows of an ASE database (optionally an ASE ``selection`` string) in id order.

    ``keys`` name the labels (`structure_from_atoms`: energy_key, forces_key, ...).
    """
    check_on_error(on_error)
    path = Path(path)
    if not path.is_file():  # ase.db.connect would create an empty database
        raise DataError(f"{path}: no such ASE database")
    try:
        rows = ase.db.connect(str(path)).select(selection, sort="id")
        for row in rows:
            source = f"{path}#id={row.id}"
            structure = convert_record(source, lambda: structure_from_row(row, source, **keys), on_error, skipped)
            if structure is not None:
                yield structure
    except DataError:
        raise
    except Exception as exc:  # sqlite3.DatabaseError, JSON errors: the file itself is unreadable
        raise DataError(f"{path}: cannot read as an ASE database ({type(exc).__name__}: {exc})") from exc
