"""The notebooks run top to bottom (with a shortened training), so they cannot go stale."""

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_QUICKSTART_EPOCHS", "3")
    monkeypatch.setenv("MLIP_QUICKSTART_STRUCTURES", "40")
    monkeypatch.setenv("MLIP_QUICKSTART_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MLIP_DATA_DIR", str(tmp_path / "data"))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(notebook, tmp_path / name)  # the executed copy, for a look after a failure
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # learning curve, parity plot, energy trace
    assert (tmp_path / "run" / "model.safetensors").is_file()
