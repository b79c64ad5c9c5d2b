"""Inference replayed from CUDA graphs, so that small systems are not bound by kernel launches.

A call of `Potential.predict` with forces and stress launches a few thousand small
kernels; for a few hundred atoms the GPU finishes each faster than Python can launch
the next. `GraphedPotential` captures the whole call (forward and the autograd pass
for forces and stress) once per padded size and then replays it: one launch per call.

Shapes are padded up to "buckets" (at most 1/``steps_per_octave`` larger than the
input), so MD and relaxations, whose edge counts drift, reuse a few graphs; a consumer that
knows a budget every input fits (training batches packed to one, `mlip.data.samplers.
PackedBatchSampler`) gives it as a fixed ``shape`` and replays one graph for all of them:

- padding atoms sit in one extra padding graph and are never returned;
- padding edges join the last padding atom to itself across a cell translation of
  length ``3 r_max`` (the padding graph's cell is ``3 r_max`` times the identity),
  so their radial weights and every derivative through them are exactly zero;
- padding graphs have the same cell and no atoms.

Every graph the process captures allocates from one memory pool per device (`shared_pool`):
the training step, the optimiser update, validation, the calculator and torch-sim. A
capture may reuse what earlier captures freed (their activations); measured on an H100, a
smaller size captured after a larger one still adds about 80% of the first's reserved memory,
so the memory saved is mostly that of training capturing one padded shape. The price: a
graph's outputs are valid only until another graph of the process replays, so every consumer
copies them out at once.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from mlip.data.flat_buffer import flatten
from mlip.models.potential import Potential

STEPS_PER_OCTAVE = 8  # padded sizes per doubling: a batch pads by at most 1/8
PADDING_SHIFT = np.array([1.0, 0.0, 0.0])  # of padding edges, in cells of 3 r_max (`PaddedInputs`)
NUMPY_DTYPES = {dtype: torch.empty(0, dtype=dtype).numpy().dtype
                for dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8)}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _span(dim: int, start: int, stop: int | None) -> tuple[slice, ...]:
    """The index of entries ``start:stop`` along axis ``dim``."""
    return (slice(None),) * dim + (slice(start, stop),)


_POOLS: dict[torch.device, Any] = {}


def shared_pool(device: torch.device | str) -> Any:
    """The memory pool every CUDA graph of this process captures into on ``device`` (made on
    first use; a process-wide resource like the caching allocator it lives in)."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _POOLS:
        # a MemPool, not a bare graph_pool_handle: it holds the pool itself, so the pool outlives
        # the graphs captured into it (a handle whose graphs were all freed cannot be reused:
        # the allocator's pool is gone and the next capture fails an internal assert)
        with torch.cuda.device(device):
            _POOLS[device] = torch.cuda.MemPool()
    return _POOLS[device].id


def padded_size(count: int, steps_per_octave: int = STEPS_PER_OCTAVE) -> int:
    """Smallest bucket >= count: a multiple of 2^k for counts in [steps·2^k, 2·steps·2^k)."""
    if count <= 2 * steps_per_octave:
        return 2 * steps_per_octave
    step = 2 ** max(0, math.floor(math.log2(count)) - int(math.log2(steps_per_octave)))
    return -(-count // step) * step


class PaddedInputs:
    """Static input tensors of one bucket: filled in place before each replay.

    Every buffer is a view of one byte buffer, ``flat`` (`mlip.data.flat_buffer`). A batch on
    the host is written, padding included, into a host image of it and crosses in one copy
    (page-locked when ``flat`` is on CUDA, so the copy is asynchronous); a batch already on
    the device is copied in tensor by tensor.

    Args:
        num_atoms, num_edges, num_graphs: padded sizes (atoms include at least one padding atom).
        r_max: the model's cutoff, Å (sets the length of padding edges).
    """

    # each padded buffer: which count sizes it (0 atoms, 1 edges, 2 graphs) and along which axis
    PADDED = (("species", 0, 0), ("positions", 0, 0), ("batch", 0, 0), ("edge_index", 1, 1), ("shifts", 1, 0),
              ("cell", 2, 0))
    UNPADDED: tuple[str, ...] = ()  # buffers filled whole (none here)

    def __init__(self, num_atoms: int, num_edges: int, num_graphs: int, r_max: float, device, dtype):
        self.sizes = (num_atoms, num_edges, num_graphs)
        self.species = torch.empty(num_atoms, dtype=torch.long, device=device)
        self.positions = torch.empty(num_atoms, 3, dtype=dtype, device=device)
        self.batch = torch.empty(num_atoms, dtype=torch.long, device=device)
        self.edge_index = torch.empty(2, num_edges, dtype=torch.long, device=device)
        self.shifts = torch.empty(num_edges, 3, dtype=dtype, device=device)
        self.cell = torch.empty(num_graphs, 3, 3, dtype=dtype, device=device)
        self.padding_cell = 3.0 * r_max * np.eye(3)  # padding graphs' cell: no padding edge shorter than r_max
        self._set_up()

    def _paddings(self) -> dict[str, Any]:
        """The value of every padded buffer's entries past the counts (host values)."""
        num_atoms, _, num_graphs = self.sizes
        return {"species": 0, "positions": 0.0, "batch": num_graphs - 1, "edge_index": num_atoms - 1,
                "shifts": PADDING_SHIFT, "cell": self.padding_cell}

    def _set_up(self) -> None:
        """Make the buffers views of one byte buffer, ``flat``, and pad them whole."""
        names = [name for name, _, _ in self.PADDED] + list(self.UNPADDED)
        self.flat, self.slots, views = flatten({name: getattr(self, name) for name in names})
        for name, view in views.items():
            setattr(self, name, view)
        self._host_padding = self._paddings()
        self._device_padding = {  # arrays as device tensors, made once: a fill then copies no host data
            name: torch.as_tensor(value, dtype=getattr(self, name).dtype, device=self.flat.device)
            if isinstance(value, np.ndarray) else value for name, value in self._host_padding.items()}
        self.counts = self.sizes  # all entries "held": the reset below pads every one
        self._copy_in({name: getattr(self, name)[_span(dim, 0, 0)] for name, _, dim in self.PADDED}, (0, 0, 0))

    def fill(self, species, positions, cell, batch, edge_index, shifts, *more) -> None:
        """Copy one (batched) graph in; the rest becomes padding: in one copy of a host image
        when the graph is on the host, else tensor by tensor. ``more``: what a subclass's two
        fill paths take besides (`PaddedLabels`: the labels)."""
        fill = self._fill_from_host if positions.device.type == "cpu" else self._fill_on_device
        fill(species, positions, cell, batch, edge_index, shifts, *more)

    @staticmethod
    def _inputs(species, positions, cell, batch, edge_index, shifts) -> tuple[dict[str, torch.Tensor], tuple]:
        """The tensor for each input buffer, and the counts (atoms, edges, graphs) they hold."""
        values = {"species": species, "positions": positions, "batch": batch, "edge_index": edge_index,
                  "shifts": shifts, "cell": cell}
        return values, (species.shape[0], edge_index.shape[1], cell.shape[0])

    def _fill_from_host(self, species, positions, cell, batch, edge_index, shifts) -> None:
        images = self._host_images()
        self._write(images, *self._inputs(species, positions, cell, batch, edge_index, shifts))
        self._send()

    def _fill_on_device(self, species, positions, cell, batch, edge_index, shifts) -> None:
        self._copy_in(*self._inputs(species, positions, cell, batch, edge_index, shifts))

    # -- from the host: the whole bucket written into an image, then one copy ------------
    def _host_images(self) -> dict[str, np.ndarray]:
        """NumPy views of a host image of ``flat``: ``flat`` itself on the CPU, else a new
        page-locked buffer (torch's caching host allocator hands it out again only once the
        copy queued from it has run)."""
        if self.flat.device.type == "cpu":
            self._image = self.flat
        else:
            self._image = torch.empty(self.flat.shape, dtype=torch.uint8, pin_memory=True)
        data = self._image.numpy()
        images = {}
        for slot in self.slots:
            start, end = slot.byte_range
            images[slot.key] = data[start:end].view(NUMPY_DTYPES[slot.dtype]).reshape(slot.shape)
        return images

    def _write(self, images: dict[str, np.ndarray], values: dict[str, torch.Tensor], counts: tuple) -> None:
        """Every padded buffer's image written whole: the values, then padding."""
        for name, which, dim in self.PADDED:
            image, count = images[name], counts[which]
            head = image[_span(dim, 0, count)]
            head[...] = _numpy(values[name]).reshape(head.shape)
            image[_span(dim, count, None)] = self._host_padding[name]
        self.counts = counts

    def _send(self) -> None:
        """Copy the image written through `_host_images` into ``flat``."""
        if self._image is not self.flat:
            self.flat.copy_(self._image, non_blocking=True)
        self._image = None

    # -- from the device: tensor by tensor, resetting only what the last fill held -------
    def _copy_in(self, values: dict[str, torch.Tensor], counts: tuple) -> None:
        """Entries past the counts are padding already, except where the last fill held more:
        only those are reset (each reset is a kernel launch, and a launch is host time)."""
        for name, which, dim in self.PADDED:
            buffer, count, last = getattr(self, name), counts[which], self.counts[which]
            head = buffer[_span(dim, 0, count)]
            head.copy_(values[name].view_as(head))
            if count < last:
                buffer[_span(dim, count, last)] = self._device_padding[name]
        self.counts = counts

    def arguments(self) -> tuple:
        return self.species, self.positions, self.cell, self.batch, self.edge_index, self.shifts, self.sizes[2]


class BucketedGraphs:
    """One CUDA graph per bucket of padded sizes, captured on first use, least recently used dropped.

    Args:
        make_buffers: bucket key -> static buffers with ``fill(*args)``.
        function: buffers -> dict of output tensors (must not synchronise with the host).
        max_graphs: captured buckets kept.
        capture: ``False`` (or a CPU device) evaluates ``function`` eagerly on the padded buffers.
        module: the model ``function`` reads. A captured graph reads its weights at the addresses
            they had at capture, so when they move (``.cpu()`` then ``.cuda()``, as Lightning's
            teardown does at the end of a fit before a test, or any ``.to()``), every bucket is
            dropped and captured again; replaying would read freed memory. Moving the model
            to another device is refused.
    """

    def __init__(self, make_buffers, function, device: torch.device, max_graphs: int = 4, capture: bool = True,
                 module: torch.nn.Module | None = None):
        self.make_buffers, self.function = make_buffers, function
        self.device, self.max_graphs = torch.device(device), max_graphs
        self.capture = capture and self.device.type == "cuda"
        self.module = module
        self._where = self._addresses()  # of the module's weights, at the captures kept
        self.buckets: OrderedDict[Any, tuple[Any, Any, dict]] = OrderedDict()
        self.captures = 0  # buckets prepared so far, evicted ones included
        self.evictions = 0  # buckets dropped to make room, or all at once after the weights moved
        self.capture_s = 0.0  # seconds spent preparing buckets (warm-up and capture; GPU synchronised)

    def _addresses(self) -> tuple | None:
        """Where the module keeps its first weight and first buffer (a move reallocates all)."""
        if self.module is None:
            return None
        first = [next(self.module.parameters(), None), next(self.module.buffers(), None)]
        tensors = [t for t in first if t is not None]
        if tensors and tensors[0].device != self.device and self.device.type == "cuda":
            raise RuntimeError(f"the model moved from {self.device} to {tensors[0].device} after its CUDA graphs "
                               "were set up for it: build a new graphed model on the new device")
        return tuple(t.data_ptr() for t in tensors)

    def __call__(self, key, *fill_args) -> dict[str, torch.Tensor]:
        """Fill the bucket's buffers and run; the outputs are overwritten by the next call."""
        where = self._addresses()
        if where != self._where:  # the weights were reallocated: the captures read freed memory
            self.evictions += len(self.buckets)
            self.buckets.clear()
            self._where = where
        if key not in self.buckets:
            start = time.perf_counter()
            self.buckets[key] = self._prepare(key)
            if self.capture:
                torch.cuda.synchronize(self.device)
            self.capture_s += time.perf_counter() - start
            self.captures += 1
            if len(self.buckets) > self.max_graphs:
                self.buckets.popitem(last=False)
                self.evictions += 1
                if self.captures == 4 * self.max_graphs:  # once: shapes vary more than the cache holds
                    warnings.warn(
                        f"{self.captures} padded sizes captured and only {self.max_graphs} kept: each new size "
                        "costs a capture. Keep more graphs (max_graphs / cuda_graph_buckets) or batch to a "
                        "steadier size (max_atoms).",
                        stacklevel=3,
                    )
        self.buckets.move_to_end(key)
        buffers, cuda_graph, outputs = self.buckets[key]
        buffers.fill(*fill_args)
        if cuda_graph is None:
            return self.function(buffers)
        cuda_graph.replay()
        return outputs

    def stats(self) -> dict[str, float]:
        """``captures``, ``evictions`` and ``capture_s`` so far."""
        return {"captures": self.captures, "evictions": self.evictions, "capture_s": self.capture_s}

    def _prepare(self, key) -> tuple[Any, Any, dict]:
        buffers = self.make_buffers(key)
        if not self.capture:
            return buffers, None, {}
        # warm up on a side stream (lazy initialisation, autotuning, cuBLAS handles), then capture
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.function(buffers)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph, pool=shared_pool(self.device)):
            outputs = self.function(buffers)
        return buffers, cuda_graph, outputs


def bucket_of(num_atoms: int, num_edges: int, num_graphs: int, steps_per_octave: int) -> tuple[int, int, int]:
    """Padded (atoms, edges, graphs): one padding atom and one padding graph at least."""
    return (
        padded_size(num_atoms + 1, steps_per_octave),
        padded_size(max(num_edges, 1), steps_per_octave),
        padded_size(num_graphs + 1, 2),
    )


def static_shape(budget: tuple[int, int, int]) -> tuple[int, int, int]:
    """The padded (atoms, edges, graphs) of batches packed to ``budget`` (atoms, edges,
    structures): one padding atom and one padding graph beyond it, as `bucket_of`."""
    atoms, edges, structures = budget
    return int(atoms) + 1, max(int(edges), 1), int(structures) + 1


def bucket_for(num_atoms: int, num_edges: int, num_graphs: int, steps_per_octave: int,
               shape: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """``shape`` when the counts fit it (with room for a padding atom and graph), else `bucket_of`."""
    if shape is not None and num_atoms < shape[0] and num_edges <= shape[1] and num_graphs < shape[2]:
        return tuple(shape)
    return bucket_of(num_atoms, num_edges, num_graphs, steps_per_octave)


class GraphedPotential:
    """Energies, forces (and stress) of a `Potential` for inference, replayed from CUDA graphs.

    Args:
        potential: the model, on a CUDA device, in eval mode.
        compute_stress: capture the stress as well.
        steps_per_octave: bucket resolution (padding is at most 1/steps_per_octave).
        max_graphs: captured buckets kept (least recently used ones are released).
        capture: ``False`` evaluates the padded inputs eagerly (any device; for tests).
        check_elements: check each graph's elements against the model's (a host sync; the
            training loop checks them on the CPU instead).
        shape: padded (atoms, edges, graphs) of every input that fits it (`static_shape` of a
            packing budget): one graph for all of them; larger inputs fall back to buckets.

    Calling it on a graph returns the same dict as ``potential(graph, compute_stress=...)``
    (``energy``, ``interaction_energy``, ``e0_energy`` [G], ``node_energy`` [n], ``forces`` [n, 3],
    ``stress`` [G, 3, 3]), as new tensors.
    """

    def __init__(
        self,
        potential: Potential,
        compute_stress: bool = True,
        steps_per_octave: int = STEPS_PER_OCTAVE,
        max_graphs: int = 4,
        capture: bool = True,
        check_elements: bool = True,
        shape: tuple[int, int, int] | None = None,
    ):
        self.potential = potential
        self.shape = None if shape is None else tuple(int(v) for v in shape)
        self.compute_stress = compute_stress
        self.check_elements = check_elements
        self.steps_per_octave = steps_per_octave
        device, dtype = potential.e0s.device, potential.dtype
        self.graphs = BucketedGraphs(
            lambda key: PaddedInputs(*key, potential.r_max, device, dtype), self._predict, device, max_graphs, capture,
            module=potential,
        )

    def _predict(self, inputs: PaddedInputs) -> dict[str, torch.Tensor]:
        return self.potential.predict(*inputs.arguments(), compute_forces=True, compute_stress=self.compute_stress)

    def __call__(self, graph: Any) -> dict[str, torch.Tensor]:
        *tensors, g = self.potential.inputs(graph, self.check_elements)
        n = tensors[0].shape[0]
        outputs = self.graphs(bucket_for(n, tensors[4].shape[1], g, self.steps_per_octave, self.shape), *tensors)
        result = {name: outputs[name][:g].clone() for name in ("energy", "interaction_energy", "e0_energy")}
        result["node_energy"] = outputs["node_energy"][:n].clone()
        result["forces"] = outputs["forces"][:n].clone()
        if self.compute_stress:
            result["stress"] = outputs["stress"][:g].clone()
        return result
