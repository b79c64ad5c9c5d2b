"""The package as a user installs it: a wheel built from the source, installed non-editable
away from the checkout, whose commands find their configs and train, evaluate and relax."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlip import __version__
from mlip.configs import TOOLS, config_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden_irreps=4x0e+4x1o", "model.max_ell=1", "model.correlation=2", "model.radial_mlp=[8]",
        "model.readout_mlp=4", "model.r_max=4.0", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data.batch_size=4", "data.train_files.n_structures=24", "hydra.run.dir=run"]


def _run(args, cwd, env, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, scripts folder, environment) of the wheel installed with --target."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # only what the wheel is built from: no build/ left over, no checkout around it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mlip", source / "mlip", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(source)], tmp, os.environ)
    (wheel,) = (tmp / "dist").glob("*.whl")
    assert wheel.name == f"mlip_forge-{__version__}-py3-none-any.whl"
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], tmp, os.environ)
    env = {**os.environ, "PYTHONPATH": str(site), "MLIP_DATA_DIR": str(tmp / "data"), "WANDB_MODE": "disabled"}
    return wheel, site, site / "bin", env, tmp


def test_the_wheel_holds_every_config(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    ours = {f"mlip/configs/{p.relative_to(config_dir('train').parent).as_posix()}"
            for p in config_dir("train").parent.rglob("*.yaml")}
    assert len(ours) > 20 and ours <= names, sorted(ours - names)


def test_installed_commands_run_away_from_the_checkout(installed):
    _, site, bin_dir, env, tmp = installed
    work = tmp / "work"
    work.mkdir()
    where = _run([sys.executable, "-c", "import mlip; print(mlip.__file__)"], work, env).stdout.strip()
    assert Path(where).is_relative_to(site), f"imported {where}, not the installed wheel"
    for tool in TOOLS:
        help_text = _run([bin_dir / f"mlip-{tool}", "--help"], work, env).stdout
        assert f"mlip-{tool} (mlip-forge {__version__})" in help_text

    # a user's own data group beside ours (--config-dir), trained on the embedded default's data
    (work / "my_configs" / "data").mkdir(parents=True)
    (work / "my_configs" / "data" / "my_emt.yaml").write_text("defaults:\n  - emt\n  - _self_\nval_fraction: 0.25\n")
    out = _run([bin_dir / "mlip-train", "--config-dir", "my_configs", "data=my_emt", *TINY], work, env).stdout
    assert "epoch 1/1" in out and "Tip:" not in out
    model = work / "run" / "model.safetensors"
    assert model.is_file()

    data = tmp / "data" / "emt" / "cu_au_ni_emt.extxyz"
    _run([bin_dir / "mlip-eval", f"model={model}", f"data={data}", "output_dir=eval"], work, env)
    assert (work / "eval").is_dir() and any((work / "eval").iterdir())
    cell = work / "cell.extxyz"
    _run([sys.executable, "-c", "from ase.build import bulk; from ase.io import write; a = bulk('Cu', cubic=True);"
          f"a.rattle(0.05, seed=1); write('{cell}', a)"], work, env)
    _run([bin_dir / "mlip-relax", f"model={model}", f"input={cell}", "output_dir=relaxed", "fmax=0.5", "steps=20"],
         work, env)
    assert (work / "relaxed" / "relaxed.extxyz").is_file()

    oracle = ROOT / "tests" / "convert" / "mace_torch_oracle" / "scaleshift_residual_nu3_l1_f64.model"
    out = _run([bin_dir / "mlip-convert", f"input={oracle}", "output=converted.safetensors"], work, env).stdout
    assert "model file: converted.safetensors" in out and (work / "converted.safetensors").is_file()
    failed = subprocess.run([bin_dir / "mlip-convert", f"input={cell}"], cwd=work, env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and "cell.extxyz" in failed.stderr
