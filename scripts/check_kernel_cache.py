#!/usr/bin/env python
"""Several training processes at once on one cold cuequivariance kernel folder, on the GPU machine.

    python scripts/check_kernel_cache.py --train .accuracy_data/3bpa_random/train.xyz --processes 6

cuequivariance-ops compiles its CUDA kernels with NVRTC at first use and keeps them where
``CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR`` points. Two schemes, each with ``--processes``
processes started at once on an empty folder: ``shared`` names one folder for all of them
(cuequivariance-ops' own sharing), ``mlip`` leaves the variable unset, so each process works
in a private copy that `mlip.nn.tensor_product.cache` publishes at exit. Then one more
process per scheme on the now warm folder. Each process builds a cueq MACE (32x0e+32x1o,
ℓ ≤ 3, ν = 3) and takes two E+F Adam steps on 10 molecules. Reported: exit codes and
seconds per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(train: Path) -> None:
    import torch
    from benchmark import potential
    from torch_geometric.data import Batch

    from mlip.data.graph import structure_to_graph
    from mlip.data.readers import read_structures
    from mlip.training.loss import EnergyForcesStressLoss

    graphs = [structure_to_graph(s, 5.0) for s in read_structures(train, stress_key=None, virial_key=None)[:10]]
    elements = sorted({int(z) for g in graphs for z in g.atomic_numbers})
    batch = Batch.from_data_list(graphs).to("cuda")
    model = potential(elements, 5.0, "32x0e+32x1o", "cueq", 20.0).cuda()
    loss_fn = EnergyForcesStressLoss(energy_weight=1.0, forces_weight=10.0, stress_weight=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        optimiser.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(batch, create_graph=True), batch)
        loss.backward()
        optimiser.step()
    torch.cuda.synchronize()
    assert torch.isfinite(loss), loss


def launch(count: int, env: dict, train: Path, timeout: float) -> list[dict]:
    start = time.perf_counter()
    runs = [subprocess.Popen([sys.executable, __file__, "--worker", "--train", str(train)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(count)]
    results = []
    for run in runs:
        try:
            output, _ = run.communicate(timeout=max(timeout - (time.perf_counter() - start), 1))
            results.append({"exit": run.returncode, "s": round(time.perf_counter() - start, 1),
                            "tail": output[-300:] if run.returncode else ""})
        except subprocess.TimeoutExpired:
            run.kill()
            results.append({"exit": "timeout", "s": round(time.perf_counter() - start, 1)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="an extxyz file of molecules")
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.train)
    root = Path(tempfile.mkdtemp(prefix="kernel-cache-check-"))
    ours = ("CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR", "MLIP_PRIVATE_NVRTC_CACHE_DIR")
    base = {k: v for k, v in os.environ.items() if k not in ours}
    schemes = {"shared": dict(base, MLIP_CACHE_DIR=str(root / "a"), CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR=str(root / "shared")),
               "mlip": dict(base, MLIP_CACHE_DIR=str(root / "b"))}
    (root / "shared").mkdir()
    for name, env in schemes.items():
        for round_name, count in (("cold", args.processes), ("warm", 1)):
            results = launch(count, env, args.train.resolve(), args.timeout)
            print(json.dumps({"scheme": name, "round": round_name, "results": results}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
