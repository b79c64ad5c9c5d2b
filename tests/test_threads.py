"""CPU threads: one per CPU no other process is busy on, so a shared machine does not stall every call."""

import multiprocessing
import os
import time

import numpy as np
import pytest
import torch

from mlip import threads


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_threads_win_and_omp_num_threads_is_left_alone(restore_threads, monkeypatch):
    assert threads.set_threads(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(threads._TORCH_STARTUP_THREADS)
    assert threads.set_threads() == threads._TORCH_STARTUP_THREADS  # torch read OMP_NUM_THREADS itself
    with pytest.raises(ValueError, match="at least 1"):
        threads.set_threads(0)


def test_the_default_leaves_out_the_cpus_other_processes_keep_busy(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 3)
    assert threads.default_threads() == 5
    monkeypatch.setattr(threads, "busy_elsewhere", lambda: 20)
    assert threads.default_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # confined to 8 of 64 (SLURM, cgroups): all 8 are ours
    assert threads.default_threads() == 8


@pytest.mark.skipif(threads.usable_cpus() < 2 or not os.path.exists("/proc/loadavg"), reason="needs 2 CPUs and Linux")
def test_a_busy_process_beside_does_not_slow_a_calculator_call_more_than_twice(restore_threads, monkeypatch):
    """On all CPUs with one of them taken by another process, torch's default threads wait on each
    other at every parallel region; the calculator's default takes the free CPUs only."""
    from ase.build import bulk

    from mlip.calculator import MLIPCalculator
    from tests.conftest import make_tiny_potential

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    atoms = bulk("Cu", cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)

    def median_ms(calc) -> float:
        times = []
        for k in range(12):
            atoms.positions[0, 0] += 1e-4
            start = time.perf_counter()
            calc.get_potential_energy(atoms), calc.get_forces(atoms)
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times[2:]))

    potential = make_tiny_potential()
    torch.set_num_threads(threads._TORCH_STARTUP_THREADS)
    alone = median_ms(MLIPCalculator(potential))
    busy = [multiprocessing.get_context("spawn").Process(target=_spin, args=(60.0,)) for _ in range(threads.usable_cpus() - 1)]
    for process in busy:
        process.start()
    try:
        time.sleep(1.0)  # the spinners are running
        torch.set_num_threads(threads._TORCH_STARTUP_THREADS)  # as a fresh process: nothing set yet
        shared = median_ms(MLIPCalculator(potential))
        chosen = torch.get_num_threads()
    finally:
        for process in busy:
            process.terminate()
            process.join()
    assert chosen == 1
    assert shared < 2.0 * alone, (alone, shared)
