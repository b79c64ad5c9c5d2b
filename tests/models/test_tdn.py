"""TDN: the MACE backbone with CP-decomposed tensor products; exact at full rank, trains end to end."""

import csv

import pytest

import torch
from e3nn import o3

from mlip.cli.train import train
from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from tests.conftest import ELEMENTS, compose_train_config, make_tiny_potential, random_alloy


def _tdn(**kwargs):
    torch.manual_seed(0)
    spec = {"target": "mlip.models.tdn.TDN", "kwargs": dict(
        num_elements=3, avg_num_neighbors=12.0, r_max=4.0, num_bessel=6, max_ell=2, hidden_irreps="4x0e+4x1o",
        correlation=2, radial_mlp=[8], readout_mlp=4, **kwargs)}
    return Potential(build_model(spec), ELEMENTS, [-1.2, -3.5, -0.7], scale=1.7, shift=0.3, model_spec=spec)


def test_full_rank_without_sharing_is_mace_on_the_same_weights(rng):
    mace = make_tiny_potential(correlation=2, tp_backend="e3nn")
    tdn = _tdn(cp_rank="full", cp_share_paths=False)
    missing, unexpected = tdn.load_state_dict(mace.state_dict(), strict=False)
    assert not missing and all(".convolution.tensor_product." in key for key in unexpected)  # e3nn's constants
    graph = structure_to_graph(structure_from_atoms(random_alloy(rng), "t"), 4.0)
    a, b = mace(graph, compute_stress=True), tdn(graph, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-10)


def test_shared_paths_at_low_rank_are_approximately_equivariant(rng):
    # rank 3 cuts through the 1o triplet of the first layer (rank 4 would keep whole irreps: exact)
    tdn = _tdn(cp_rank=3, cp_share_paths=True)
    atoms = random_alloy(rng)
    graph = structure_to_graph(structure_from_atoms(atoms, "t"), 4.0)
    reference = tdn(graph)
    rotation = o3.rand_matrix().numpy()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rotation.T
    out = tdn(structure_to_graph(structure_from_atoms(rotated, "r"), 4.0))
    energy_error = float((out["energy"] - reference["energy"]).abs().detach())
    assert 1e-9 < energy_error < 1e-1 * float(reference["energy"].abs().detach())  # approximate, not broken


def _val_losses(folder):
    rows = [r for r in csv.DictReader(open(folder / "logs" / "metrics.csv")) if r.get("val_loss")]
    return [float(r["val_loss"]) for r in rows]


@pytest.mark.parametrize("learn_factors", [False, True])
def test_tdn_trains_on_the_emt_default(tmp_path, emt_file, learn_factors):
    cfg = compose_train_config(
        tmp_path, emt_file, "model=tdn", "model.cp_rank=8", f"model.cp_learn_factors={learn_factors}",
        "trainer.max_epochs=4",
    )
    metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    losses = _val_losses(tmp_path)
    assert min(losses[1:]) < losses[0], losses


def test_tdn_trains_on_the_oc20_sample(tmp_path, dataset_dir):
    path = dataset_dir / "oc20_style" / "c3h8_cu_relax_s2ef.lmdb"
    cfg = compose_train_config(
        tmp_path, None, "data=oc20_s2ef", f"data.train_files={path}", f"data.val_files={path}", "data.format=oc20_lmdb",
        "~data.reader", "data.num_workers=0", "data.max_atoms=null", "data.batch_size=8", "model=tdn", "model.cp_rank=8",
        "module.loss.stress_weight=0.0", "trainer.max_epochs=3",
    )
    metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    losses = _val_losses(tmp_path)
    assert min(losses[1:]) < losses[0], losses
