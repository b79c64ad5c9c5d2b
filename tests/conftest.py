"""Shared fixtures: float64 by default, tiny models, small alloy structures, dataset samples."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlip.models.potential import Potential
from mlip.models.registry import build_model

ELEMENTS = [28, 29, 79]  # Ni, Cu, Au


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Derived artefacts (cuequivariance polynomials and compiled kernels) go to a per-session
    folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("mlip-cache")
    names = {"MLIP_CACHE_DIR": folder, "CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR": folder / "cueq" / "nvrtc"}
    names["CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR"].mkdir(parents=True)
    previous = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(value) for name, value in names.items()})
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def tiny_model_spec(correlation: int = 2, r_max: float = 4.0, **overrides) -> dict:
    kwargs = dict(
        num_elements=len(ELEMENTS),
        avg_num_neighbors=12.0,
        r_max=r_max,
        num_bessel=6,
        max_ell=2,
        hidden_irreps="4x0e+4x1o",
        correlation=correlation,
        num_interactions=2,
        radial_mlp=[8],
        readout_mlp=4,
    )
    kwargs.update(overrides)
    return {"target": "mlip.models.mace.MACE", "kwargs": kwargs}


def make_tiny_potential(seed: int = 0, correlation: int = 2, pair_repulsion: dict | None = None, **overrides) -> Potential:
    """A small random MACE Potential in the current default dtype with non-trivial statistics
    (``pair_repulsion``: e.g. ``{"kind": "zbl", "p": 5, "scaled": False}``)."""
    torch.manual_seed(seed)
    spec = tiny_model_spec(correlation, **overrides)
    if pair_repulsion is not None:
        spec["pair_repulsion"] = pair_repulsion
    return Potential(build_model(spec), ELEMENTS, [-1.2, -3.5, -0.7], scale=1.7, shift=0.3, model_spec=spec)


@pytest.fixture
def tiny_potential() -> Potential:
    return make_tiny_potential()


# the parts of mace-torch's foundation models: density-normalised messages, Agnesi radial input, ZBL
FOUNDATION_PARTS = dict(interaction="density", distance_transform="agnesi", atomic_numbers=ELEMENTS,
                        residual_first=False, pair_repulsion={"kind": "zbl", "p": 5, "scaled": True})
# ... and MACE-MH-1's: non-linear blocks, edge irreps, agnostic products, the envelope on the weights
MH1_PARTS = dict(interaction="nonlinear", edge_irreps="2x0e+2x1o", edge_irreps_first_scalars=True,
                 agnostic_product=True, apply_cutoff=False, distance_transform="agnesi", atomic_numbers=ELEMENTS,
                 pair_repulsion={"kind": "zbl", "p": 5, "scaled": True})


def random_alloy(rng: np.random.Generator, repeat=(1, 1, 1), rattle: float = 0.1) -> Atoms:
    """A rattled, sheared fcc Cu/Ni/Au cell (periodic)."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    atoms.numbers = rng.choice(ELEMENTS, size=len(atoms))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
    return atoms


def random_cluster(rng: np.random.Generator, n: int = 7) -> Atoms:
    """A non-periodic cluster with no pair closer than about 2 Å."""
    positions = [np.zeros(3)]
    while len(positions) < n:
        trial = rng.uniform(-3.0, 3.0, 3)
        if min(np.linalg.norm(trial - p) for p in positions) > 2.0:
            positions.append(trial)
    return Atoms(numbers=rng.choice(ELEMENTS, size=n), positions=np.array(positions))


@pytest.fixture
def dataset_dir() -> Path:
    """The real dataset samples named by MLIP_TEST_DATA (CI sets it); skip when absent."""
    root = os.environ.get("MLIP_TEST_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("MLIP_TEST_DATA is not set to the shared dataset samples")
    return Path(root)


@pytest.fixture(scope="session")
def emt_file(tmp_path_factory) -> str:
    """A small EMT dataset (40 structures), made once per test session."""
    from mlip.data.emt import ensure_emt_dataset

    return ensure_emt_dataset(tmp_path_factory.mktemp("emt") / "emt.xyz", n_structures=40, seed=1)


def compose_train_config(output_dir, emt_path, *overrides: str):
    """The `mlip-train` config with a tiny model and dataset, as a test would run it.

    ``emt_path`` None leaves the data config to the overrides (``data=store ...``).
    """
    from hydra import compose, initialize_config_dir

    from mlip.cli.train import CONFIG_DIR

    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "mace")
    if model.startswith("facet"):
        tiny_model = ["model.spline_basis=8", "model.grid_hidden=8", "model.grid_resolution=3"]
    else:
        tiny_model = ["model.correlation=2", "model.radial_mlp=[8]"]
    tiny_model = ["model.hidden_irreps=4x0e+4x1o", "model.max_ell=1", "model.r_max=4.0", "model.readout_mlp=4",
                  *tiny_model]
    if model == "escaip":
        tiny_model = ["model.channels=8", "model.heads=2", "model.direction_ell=1", "model.r_max=4.0",
                      "model.readout_mlp=8"]
    if model == "pretrained" or any(o.startswith("finetune=") for o in overrides):
        tiny_model = []  # the model file says it all
    tiny = [
        f"output_dir={output_dir}",
        "data.batch_size=4",
        *tiny_model,
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "module.warmup_steps=3",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        data = [f"data.train_files={emt_path}"] if emt_path is not None else []
        return compose(config_name="train", overrides=tiny + data + list(overrides))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, emt_file):
    """A run folder of a tiny model trained for a few epochs on the small EMT set."""
    from mlip.cli.train import train

    previous = torch.get_default_dtype()
    out = tmp_path_factory.mktemp("trained")
    train(compose_train_config(out, emt_file, "trainer.max_epochs=6", "dtype=float64"))
    torch.set_default_dtype(previous)
    return out


def assert_graphed_loss_matches(graphed, potential, batch, reference: torch.Tensor, expected) -> None:
    """The loss ``graphed`` (a `GraphedLoss`) gives ``batch``, and its parameter gradients, equal
    the eager ``reference`` loss and gradients ``expected``; no autograd graph outlives the call
    (as in the training loop: none may live on into the next capture)."""
    loss, _ = graphed(batch)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    potential.zero_grad(set_to_none=True)
    loss.backward()
    for p, g in zip(potential.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-8, atol=1e-10)
