"""Timing helper shared by the benchmark scripts (they run as ``python scripts/<name>.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def cuda_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Mean wall-clock milliseconds of ``fn()`` on the GPU, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats
