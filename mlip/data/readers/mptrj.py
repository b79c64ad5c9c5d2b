"""MPTrj (CHGNet's ``MPtrj_2022.9_full.json``): material id -> frame id -> frame dict.

Each frame holds a pymatgen ``Structure`` dict (``lattice.matrix``,
``sites[].species[].element``, ``xyz``/``abc``), ``corrected_total_energy`` and
``uncorrected_total_energy`` (eV), ``force`` (eV/Å), ``stress`` (kBar, VASP sign:
positive under compression) and ``magmom``. The structure dicts are parsed here,
without pymatgen.

Energies: ``corrected_total_energy`` by default, i.e. with the Materials Project
GGA/GGA+U mixing corrections applied, which is what MPTrj-trained models (CHGNet,
MACE-MP) fit; ``energy="uncorrected"`` gives the raw VASP energies.

Stress is converted to ASE's convention: ``stress = -0.1 GPa/kBar * stress_vasp``,
in eV/Å³, negative under compression.

The file (about 11 GB) is streamed one material at a time: the top-level object is
scanned with `json.JSONDecoder.raw_decode`, so no more than one material's text and
its parsed frames are in memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from ase.data import atomic_numbers as SYMBOL_TO_Z
from ase.units import GPa

from mlip.data.readers.base import SkippedRecords, check_on_error, convert_record
from mlip.data.structure import DataError, Structure

KBAR_TO_EV_PER_A3 = 0.1 * GPa  # 1 kBar = 0.1 GPa
ENERGY_FIELDS = {"corrected": "corrected_total_energy", "uncorrected": "uncorrected_total_energy"}
CHUNK = 1 << 20


def vasp_kbar_to_ase_stress(stress_kbar: np.ndarray) -> np.ndarray:
    """VASP stress in kBar (positive under compression) -> ASE stress in eV/Å³ (negative under compression)."""
    return -KBAR_TO_EV_PER_A3 * np.asarray(stress_kbar, dtype=np.float64)


def _element(site: dict, source: str, index: int) -> int:
    species = site["species"]
    if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > 1e-6:
        raise DataError(f"{source}: site {index} is disordered ({species}); MPTrj frames are ordered")
    symbol = species[0]["element"]
    if symbol not in SYMBOL_TO_Z or symbol == "X":
        raise DataError(f"{source}: site {index} has unknown element symbol {symbol!r}")
    return SYMBOL_TO_Z[symbol]


def structure_from_frame(frame: dict[str, Any], source: str, energy: str = "corrected") -> Structure:
    """One MPTrj frame dict as a `Structure` (periodic, eV, Å, eV/Å, eV/Å³ in ASE's sign)."""
    crystal = frame["structure"]
    cell = np.asarray(crystal["lattice"]["matrix"], dtype=np.float64)
    sites = crystal["sites"]
    numbers = [_element(site, source, k) for k, site in enumerate(sites)]
    if all("xyz" in site for site in sites):
        positions = np.array([site["xyz"] for site in sites], dtype=np.float64)
    else:
        positions = np.array([site["abc"] for site in sites], dtype=np.float64) @ cell
    field = ENERGY_FIELDS[energy]
    if frame.get(field) is None:
        raise DataError(f"{source}: no {field}")
    if frame.get("force") is None:
        raise DataError(f"{source}: no forces ('force' is missing or null)")
    stress = frame.get("stress")
    magmom = frame.get("magmom")
    info = {"material_id": frame.get("mp_id"), "energy_field": field}
    if magmom is not None:
        info["magmom"] = np.asarray(magmom, dtype=np.float64)
    return Structure(
        atomic_numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=np.asarray(crystal["lattice"].get("pbc", (True, True, True)), dtype=bool),
        energy=float(frame[field]),
        forces=np.asarray(frame["force"], dtype=np.float64),
        stress=None if stress is None else vasp_kbar_to_ase_stress(np.asarray(stress)),
        source=source,
        info=info,
    )


class _ObjectStream:
    """Walks the members of a top-level JSON object, decoding one value at a time."""

    def __init__(self, handle: TextIO, path: Path):
        self.handle, self.path = handle, path
        self.buffer, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        try:
            chunk = self.handle.read(max(CHUNK, len(self.buffer) - self.pos))
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text ({exc.reason}): not an MPTrj JSON file") from None
        if not chunk:
            self.eof = True
            return False
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos = 0
        return True

    def _skip_space(self) -> str:
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._more():
                return ""

    def _expect(self, chars: str, where: str) -> str:
        char = self._skip_space()
        if char == "" or char not in chars:
            found = "end of file" if char == "" else repr(char)
            raise DataError(f"{self.path}: malformed JSON {where}: expected one of {chars!r}, found {found}")
        self.pos += 1
        return char

    def _value(self, where: str) -> Any:
        self._skip_space()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                if not self.eof and self._more():  # the value may run past the buffer: read on
                    continue
                raise DataError(f"{self.path}: malformed or truncated JSON {where} ({exc.msg})") from exc
            if end == len(self.buffer) and not self.eof and self._more():
                continue  # a number may continue in the next chunk
            self.pos = end
            return value

    def members(self) -> Iterator[tuple[str, Any]]:
        self._expect("{", "at the start of the file")
        if self._skip_space() == "}":
            return
        while True:
            key = self._value("where a material id was expected")
            if not isinstance(key, str):
                raise DataError(f"{self.path}: malformed JSON: material id {key!r} is not a string")
            self._expect(":", f"after material id {key!r}")
            yield key, self._value(f"in material {key!r}")
            if self._expect(",}", f"after material {key!r}") == "}":
                return


def iter_mptrj(
    path: str | Path,
    energy: str = "corrected",
    on_error: str = "raise",
    skipped: SkippedRecords | None = None,
) -> Iterator[Structure]:
    """Yield every frame of an MPTrj JSON file as a `Structure` named ``path#material/frame``.

    Args:
        energy: ``"corrected"`` (default, MP2020-corrected total energy) or ``"uncorrected"``.
    """
    check_on_error(on_error)
    if energy not in ENERGY_FIELDS:
        raise ValueError(f"energy must be one of {sorted(ENERGY_FIELDS)}, got {energy!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such MPTrj JSON file")
    with path.open(encoding="utf-8") as handle:
        for material_id, frames in _ObjectStream(handle, path).members():
            if not isinstance(frames, dict):
                raise DataError(f"{path}#{material_id}: expected an object of frames, got {type(frames).__name__}")
            for frame_id, frame in frames.items():
                source = f"{path}#{material_id}/{frame_id}"
                structure = convert_record(source, lambda: structure_from_frame(frame, source, energy), on_error, skipped)
                if structure is not None:
                    yield structure
