import pytest

from mlip.data.emt import ensure_emt_dataset
from mlip.data.readers import read_structures


def test_emt_dataset_is_written_once_and_refused_for_another_size(tmp_path):
    path = tmp_path / "emt" / "set.extxyz"
    assert ensure_emt_dataset(path, n_structures=6, seed=2) == str(path)
    stamp = path.stat().st_mtime_ns
    assert ensure_emt_dataset(path, n_structures=6, seed=2) == str(path)  # found, not rewritten
    assert path.stat().st_mtime_ns == stamp
    assert len(read_structures(path)) == 6  # the stamp in the first structure does not disturb the reader
    with pytest.raises(ValueError, match=r"set\.extxyz was made with n_structures=6, seed=2, not the n_structures=20"):
        ensure_emt_dataset(path, n_structures=20, seed=2)
    with pytest.raises(ValueError, match="seed=2, not the n_structures=6, seed=3 asked for"):
        ensure_emt_dataset(path, n_structures=6, seed=3)
    assert not list(path.parent.glob(".*.tmp"))
