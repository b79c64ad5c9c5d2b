"""How many CPU threads torch uses: the CPUs this process may use that no other process keeps busy.

torch starts one intra-op thread per physical core. On a machine others share (a login node,
a cluster node running other jobs, a laptop compiling) each parallel region then waits for
threads the scheduler has given to someone else: on 2 cores with one busy process beside it,
a 32-atom calculator call went from 38 ms to seconds. One thread per CPU nobody else is
running on avoids that, and loses nothing where the machine is ours.

Order of precedence: an explicit ``threads`` (the ``threads`` key of each command's config,
or `MLIPCalculator(threads=...)`), then ``OMP_NUM_THREADS`` (torch reads it itself), then
`default_threads`.
"""

from __future__ import annotations

import os

import torch

_TORCH_STARTUP_THREADS = torch.get_num_threads()  # what torch chose before anyone set it


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a SLURM or cgroup allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_elsewhere() -> int:
    """Processes (threads) other than this one running right now (Linux /proc/loadavg: the
    runnable count, which includes the reader); 0 where unknown."""
    try:
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(running - 1, 0)


def default_threads() -> int:
    """Intra-op threads: all usable CPUs where the process is confined to an allocation (they
    are its own), else the usable CPUs minus those other processes are running on (at least 1)."""
    cpus = usable_cpus()
    if cpus < (os.cpu_count() or cpus):
        return cpus
    return max(1, cpus - busy_elsewhere())


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else leave an ``OMP_NUM_THREADS`` or
    an earlier ``torch.set_num_threads`` alone, else `default_threads`. Returns the count in use."""
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    elif not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() == _TORCH_STARTUP_THREADS:
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()
