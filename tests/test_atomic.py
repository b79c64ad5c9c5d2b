"""atomic_write_bytes: the old file or the new one, never half of one, and no leftovers."""

import os

import pytest

from mlip.atomic import atomic_write_bytes


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write_bytes(path, b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    monkeypatch.undo()
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_written_files_take_the_users_umask_not_a_private_mode(tmp_path):
    """Colleagues on a shared cluster read the model, metrics and plots: 0666 less the umask
    (0644 under umask 022), as a plain open() would, never the temporary file's 0600."""
    import os

    from mlip.atomic import atomic_write_bytes
    from mlip.export import save_model
    from mlip.integrations.lammps import write_lammps_model
    from tests.conftest import make_tiny_potential

    old = os.umask(0o022)
    try:
        written = [atomic_write_bytes(tmp_path / "metrics.csv", b"a,b\n"),
                   save_model(make_tiny_potential(), tmp_path / "model.safetensors")]
        written.append(write_lammps_model(written[1]))
        assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
        os.umask(0o077)
        assert atomic_write_bytes(tmp_path / "private.csv", b"x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
