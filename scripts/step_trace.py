"""Support for benchmark_training.py (``--trace-steps``): `StepTrace`, a Lightning callback that traces
training steps with torch.profiler and writes where each step's host and GPU time goes.

Used by ``scripts/benchmark_training.py --trace-steps N`` (the folder of this file on
PYTHONPATH, the callback added as ``+monitoring.step_trace._target_=step_trace.StepTrace``).
The trace starts at the first batch of epoch ``epoch`` (after ``skip`` steps) and covers
``steps`` steps. Written to ``out``:

- ``step_trace.txt``: the operators and CUDA runtime calls by host time and by GPU time,
  per step (torch.profiler's key averages divided by the steps);
- ``step_trace.json``: per step, the wall-clock milliseconds, the milliseconds of GPU kernels
  and copies (summed over the trace: GPU busy time), the calls that make the host wait for
  the GPU (stream, event and device synchronisations, blocking copies, ``.item()``), the
  asynchronous copies, and the kernel and graph launches; and where the synchronising calls
  come from: during the trace torch's sync debug mode (``torch.cuda.set_sync_debug_mode``)
  warns at each operation that waits for the GPU, and the Python stack of each warning is
  counted (``sync_sources_per_step``, innermost frame first).

A step whose host waits for the GPU costs host + GPU time instead of the larger of the two.
"""

from __future__ import annotations

import collections
import json
import time
import traceback
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

# calls that make the host wait for the GPU (a blocking copy, a read of a device value);
# cudaMemcpyAsync is not one of them (from pinned memory it returns at once): it is counted apart
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
         "aten::_local_scalar_dense", "aten::item")


class StepTrace(Callback):
    def __init__(self, out: str, epoch: int = 2, skip: int = 5, steps: int = 30):
        self.out, self.epoch, self.skip, self.steps = Path(out), epoch, skip, steps
        self.profiler: torch.profiler.profile | None = None
        self.seen = 0
        self.started = 0.0
        self.done = False
        self.sync_sources: collections.Counter = collections.Counter()
        self._warnings: warnings.catch_warnings | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done or trainer.current_epoch != self.epoch or trainer.global_rank != 0:
            return
        if self.profiler is None and batch_idx == self.skip:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self._watch_syncs(True)
            self.started, self.seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.profiler is None or self.done:
            return
        self.seen += 1
        if self.seen == self.steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.started
            self._watch_syncs(False)
            self.profiler.__exit__(None, None, None)
            self.done = True
            self.write(wall)

    def _watch_syncs(self, on: bool) -> None:
        """Count the Python stacks of the operations that synchronise with the GPU (on CUDA)."""
        if not torch.cuda.is_available():
            return
        if not on:
            torch.cuda.set_sync_debug_mode(0)
            self._warnings.__exit__(None, None, None)
            return
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchronizing cuda operation" not in str(message).lower():  # the debug mode's own notice too
                return show(message, category, filename, lineno, file, line)
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith(("warnings.py", "step_trace.py"))]
            where = " <- ".join(f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}({f.name})"
                                for f in reversed(frames[-6:]))
            self.sync_sources[f"{message} @ {where}"] += 1

        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")

    def write(self, wall: float) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        events = self.profiler.key_averages()
        n = self.steps
        # as torch.profiler's table sums it: device events, not the GPU spans of user annotations
        # (``Optimizer.step#...``), which cover the kernels they enclose a second time
        gpu_us = sum(e.self_device_time_total for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)
        waits = {e.key: {"calls": e.count / n, "host_ms": e.self_cpu_time_total / 1000 / n}
                 for e in events if e.key in WAITS}
        summary = {
            "steps": n,
            "wall_ms_per_step": 1000 * wall / n,
            "gpu_busy_ms_per_step": gpu_us / 1000 / n,
            "host_waits_per_step": waits,
            "async_copies_per_step": sum(e.count for e in events if e.key == "cudaMemcpyAsync") / n,
            "cuda_launches_per_step": sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC",
                                                                            "cuLaunchKernel", "cudaGraphLaunch")) / n,
            "graph_launches_per_step": sum(e.count for e in events if e.key == "cudaGraphLaunch") / n,
            "sync_sources_per_step": {k: v / n for k, v in self.sync_sources.most_common(12)},
        }
        (self.out / "step_trace.json").write_text(json.dumps(summary, indent=2))
        tables = [f"{n} steps traced; per-step figures are totals / {n}\n", json.dumps(summary, indent=2)]
        for key in ("self_cpu_time_total", "cpu_time_total", "self_device_time_total"):
            tables.append(f"\n==== by {key}\n" + events.table(sort_by=key, row_limit=40, max_name_column_width=70))
        (self.out / "step_trace.txt").write_text("\n".join(tables))
