"""The commands start fast: --help and a mistyped override answer before torch is imported."""

import subprocess
import sys

import pytest

COMMANDS = [("mlip.cli.train", "main", "mlip-train"), ("mlip.cli.launch", "evaluate", "mlip-eval"),
            ("mlip.cli.launch", "relax", "mlip-relax"), ("mlip.cli.launch", "md", "mlip-md"),
            ("mlip.cli.launch", "preprocess", "mlip-preprocess"), ("mlip.cli.launch", "convert", "mlip-convert")]


def _heavy_modules_after(module: str, function: str, argv: list[str], cwd) -> tuple[list[str], str]:
    code = (f"import sys; sys.argv = {argv!r}\nfrom {module} import {function}\n"
            f"try:\n    {function}()\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('torch', 'lightning', 'torch_geometric', 'matplotlib') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED"))
    return eval(line[7:]), done.stdout + done.stderr


@pytest.mark.parametrize("module,function,name", COMMANDS, ids=[c[2] for c in COMMANDS])
def test_help_loads_no_torch(module, function, name, tmp_path):
    loaded, output = _heavy_modules_after(module, function, [name, "--help"], tmp_path)
    assert loaded == [] and name in output


def test_a_mistyped_override_is_answered_before_torch_loads(tmp_path):
    loaded, output = _heavy_modules_after("mlip.cli.train", "main", ["mlip-train", "trainer.max_epoch=3"], tmp_path)
    assert loaded == [] and "max_epoch" in output


def test_convert_leaves_no_log_file_in_the_working_folder(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['mlip-convert', 'input=missing.model']\n"
                           "from mlip.cli.launch import convert\nconvert()"], cwd=tmp_path, capture_output=True, text=True)
    assert "missing.model: no such file" in done.stderr + done.stdout
    assert list(tmp_path.iterdir()) == []
