"""Writers of each native format for tests: small files made from EMT-labelled structures.

They follow the published layouts (see mlip/data/readers) so that every reader is
tested without the shared samples.
"""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

import ase.db
import lmdb
import numpy as np
import torch
from ase import Atoms
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.db.row import atoms2dict
from ase.io.jsonio import encode
from ase.units import GPa


def emt_slabs(n: int, seed: int = 0) -> list[Atoms]:
    """Cu(111) slabs with a rattled Au adatom, bottom layer fixed (tags 0/1/2), EMT labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0, periodic=True)
        slab.set_tags([0 if t == 3 else 1 for t in slab.get_tags()])
        top = slab.positions[slab.get_tags() == 1][:, 2].max()
        slab += Atoms("Au", positions=[[1.2, 0.8, top + 2.1]], tags=[2])
        slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
        slab.positions += 0.05 * rng.standard_normal(slab.positions.shape)
        slab.calc = EMT()
        slab.get_potential_energy()
        frames.append(slab)
    return frames


def _open_for_write(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), subdir=False, map_size=1 << 26, meminit=False, lock=False)


def write_oc20_lmdb(path: Path, frames: list[Atoms], old_style: bool = False) -> None:
    """The legacy OC20 S2EF layout: keys "0".. with pickled Data records, "length" with the count.

    ``old_style`` writes the torch_geometric 1.x layout (attributes directly in ``__dict__``).
    """
    from torch_geometric.data import Data

    env = _open_for_write(path)
    with env.begin(write=True) as txn:
        for k, atoms in enumerate(frames):
            fields = dict(
                pos=torch.tensor(atoms.positions, dtype=torch.float32),
                cell=torch.tensor(atoms.cell[:], dtype=torch.float32).view(1, 3, 3),
                atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float32),
                natoms=len(atoms),
                tags=torch.tensor(atoms.get_tags()),
                fixed=torch.tensor(atoms.get_tags() == 0, dtype=torch.float32),
                y=float(atoms.get_potential_energy()),
                force=torch.tensor(atoms.get_forces(apply_constraint=False), dtype=torch.float32),
                sid=7,
                fid=k,
            )
            txn.put(str(k).encode(), old_style_record(fields) if old_style else pickle.dumps(Data(**fields), protocol=4))
        txn.put(b"length", pickle.dumps(len(frames), protocol=4))
    env.close()


def old_style_record(fields: dict) -> bytes:
    """A pickle of a torch_geometric 1.x ``Data``: GLOBAL Data, NEWOBJ, BUILD with the attribute dict."""
    state = pickle.dumps(fields, protocol=2)  # PROTO 2 ... STOP
    return b"\x80\x02ctorch_geometric.data.data\nData\n)\x81" + state[2:-1] + b"b."


def write_aselmdb(path: Path, frames: list[Atoms]) -> None:
    """fairchem's .aselmdb layout: zlib-compressed JSON rows under ascii ids, and ``nextid``."""
    env = _open_for_write(path)
    with env.begin(write=True) as txn:
        for k, atoms in enumerate(frames, start=1):
            row = atoms2dict(atoms)
            row.update(id=k, ctime=0.0, mtime=0.0, user="test", data={"sid": 7, "fid": k - 1})
            txn.put(str(k).encode(), zlib.compress(encode(row).encode()))
        txn.put(b"nextid", zlib.compress(json.dumps(len(frames) + 1).encode()))
    env.close()


def write_ase_db(path: Path, frames: list[Atoms]) -> None:
    with ase.db.connect(str(path), append=False) as db:
        for k, atoms in enumerate(frames):
            db.write(atoms, data={"fid": k})


def mptrj_frame(atoms: Atoms, material_id: str, stress_ase: np.ndarray | None) -> dict:
    """One frame in the MPTrj JSON layout; stress given in ASE's eV/Å³ is stored as VASP kBar."""
    energy = float(atoms.get_potential_energy())
    sites = [
        {"species": [{"element": s, "occu": 1}], "abc": list(f), "xyz": list(x), "label": s, "properties": {}}
        for s, f, x in zip(atoms.get_chemical_symbols(), atoms.get_scaled_positions(), atoms.positions)
    ]
    return {
        "structure": {
            "@module": "pymatgen.core.structure",
            "@class": "Structure",
            "lattice": {"matrix": atoms.cell[:].tolist(), "pbc": [True, True, True]},
            "sites": sites,
        },
        "uncorrected_total_energy": energy,
        "corrected_total_energy": energy - 0.5,
        "energy_per_atom": energy / len(atoms),
        "force": atoms.get_forces(apply_constraint=False).tolist(),
        "stress": None if stress_ase is None else (-np.asarray(stress_ase) / (0.1 * GPa)).tolist(),
        "magmom": [0.0] * len(atoms),
        "mp_id": material_id,
    }


def write_mptrj(path: Path, materials: dict[str, list[dict]]) -> None:
    data = {mid: {f"{mid}-{k}": frame for k, frame in enumerate(frames)} for mid, frames in materials.items()}
    Path(path).write_text(json.dumps(data, indent=1))
