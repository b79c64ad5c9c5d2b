import numpy as np
import pytest

from mlip.data.graph import structure_to_graph
from mlip.data.statistics import compute_statistics, fit_e0s
from mlip.data.structure import DataError, Structure


def _structure(numbers, energy, forces=None):
    n = len(numbers)
    positions = np.arange(3 * n, dtype=float).reshape(n, 3) * 1.1
    return Structure(atomic_numbers=numbers, positions=positions, energy=energy, forces=forces)


def test_least_squares_e0s_recover_exact_references():
    e0 = {1: -13.6, 8: -430.0}
    comps = [[1, 1, 8], [8, 8], [1, 1, 1, 1, 8, 8], [1, 8]]
    composition = np.array([[c.count(1), c.count(8)] for c in comps], dtype=float)
    energies = np.array([sum(e0[z] for z in c) for c in comps])
    e0s = fit_e0s(composition.T @ composition, composition.T @ energies)
    assert np.allclose(e0s, [-13.6, -430.0], atol=1e-9)


def test_statistics_by_hand():
    structures = [
        _structure([1, 8], -440.0, forces=np.array([[1.0, 0, 0], [0, -2.0, 0]])),
        _structure([1, 1, 8], -460.0, forces=np.array([[0, 0, 2.0], [0, 0, 0], [1.0, 0, 0]])),
    ]
    graphs = [structure_to_graph(s, cutoff=2.0) for s in structures]
    stats = compute_statistics(structures, graphs, e0s={"H": -10.0, "O": -400.0})
    assert stats.elements == [1, 8] and stats.e0s == [-10.0, -400.0]
    # residual per atom: (-440 + 410)/2 = -15, (-460 + 420)/3 = -13.333
    assert stats.shift == pytest.approx((-15.0 - 40.0 / 3.0) / 2)
    assert stats.scale == pytest.approx(np.sqrt((1 + 4 + 4 + 1) / 15))
    n_edges = sum(g.edge_index.shape[1] for g in graphs)
    assert stats.avg_num_neighbors == pytest.approx(n_edges / 5)


def test_missing_isolated_atom_energy_is_named():
    s = _structure([1, 8], -1.0)
    with pytest.raises(DataError, match="no isolated-atom energy for element.*O"):
        compute_statistics([s], [structure_to_graph(s, 2.0)], e0s={"H": -13.6})


def test_isolated_atoms_file_from_3bpa(dataset_dir):
    from mlip.data.readers.extxyz import read_extxyz

    train = read_extxyz(dataset_dir / "3bpa" / "train_300K.xyz")[:20]
    graphs = [structure_to_graph(s, 5.0) for s in train]
    stats = compute_statistics(train, graphs, e0s=dataset_dir / "3bpa" / "iso_atoms.xyz")
    assert stats.elements == [1, 6, 7, 8]
    assert all(e < 0 for e in stats.e0s) and 5 < stats.avg_num_neighbors < 27
