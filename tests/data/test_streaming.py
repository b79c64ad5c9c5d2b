import torch
from mlip.data.loader import GraphLoader as DataLoader

from mlip.data.graph import structure_to_graph
from mlip.data.readers import read_structures
from mlip.data.streaming import StreamingDataset


def test_streaming_with_workers_yields_every_structure_once(emt_file):
    expected = {round(float(s.energy), 10) for s in read_structures(emt_file)}
    for workers in (0, 2):
        batches = list(DataLoader(StreamingDataset(emt_file, cutoff=4.0), batch_size=7, num_workers=workers))
        energies = [round(float(e), 10) for b in batches for e in b.energy]
        assert len(energies) == 40 and set(energies) == expected


def test_streamed_graph_equals_the_in_memory_one(emt_file):
    first = next(iter(StreamingDataset(emt_file, cutoff=4.0)))
    reference = structure_to_graph(read_structures(emt_file)[0], 4.0)
    assert torch.equal(first.edge_index, reference.edge_index) and torch.equal(first.forces, reference.forces)
