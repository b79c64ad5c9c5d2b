"""EScAIP: neighbour slots, derivatives, smoothness at the cutoff, symmetries, both force modes, training."""

import numpy as np
import pytest
import torch

from mlip.cli.train import train
from mlip.evaluation.equivariance import equivariance_audit
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.nn.neighbour_slots import gather_slots, neighbour_slots
from tests.conftest import ELEMENTS, compose_train_config, random_alloy, random_cluster
from tests.models.derivatives import assert_translation_and_permutation_invariant, force_pairs, stress_pairs
from tests.models.test_mace_potential import predict


def _escaip(**kwargs) -> Potential:
    torch.manual_seed(0)
    spec = {"target": "mlip.models.escaip.EScAIP", "kwargs": dict(
        num_elements=3, avg_num_neighbors=12.0, r_max=4.0, num_bessel=6, channels=16, heads=2, num_layers=2,
        max_neighbors=64, direction_ell=2, readout_mlp=8) | kwargs}
    return Potential(build_model(spec), ELEMENTS, [-1.2, -3.5, -0.7], scale=1.7, shift=0.3, model_spec=spec)


def test_neighbour_slots_hold_each_atoms_edges_nearest_first_and_drop_the_farthest():
    gen = torch.Generator().manual_seed(0)
    receiver = torch.randint(0, 5, (40,), generator=gen)
    lengths = torch.rand(40, generator=gen, dtype=torch.float64)
    for slots in (3, 16):
        table = neighbour_slots(receiver, lengths, 6, slots)
        assert table.shape == (6, slots)
        for i in range(6):
            mine = torch.nonzero(receiver == i).flatten()
            expected = mine[torch.argsort(lengths[mine])][:slots].tolist()
            row = table[i].tolist()
            assert row[:len(expected)] == expected and all(e == 40 for e in row[len(expected):])
    padded = gather_slots(lengths, neighbour_slots(receiver, lengths, 6, 16), padding=-1.0)
    assert (padded[5] == -1.0).all()  # node 5 has no edges


@pytest.mark.parametrize("direct", [False, True])
def test_forces_and_stress_are_derivatives_of_the_energy_in_conservative_mode(rng, direct):
    potential = _escaip(direct_forces=direct)
    assert potential.conservative is not direct
    for stress, fd in stress_pairs(potential, random_alloy(rng)):  # the strain derivative in both modes
        assert stress == pytest.approx(fd, rel=1e-5, abs=1e-9)
    for atoms in (random_alloy(rng), random_cluster(rng)):
        for force, fd in force_pairs(potential, atoms):
            if direct:  # an independent head: not the energy's gradient
                assert abs(force - fd) > 1e-6
            else:
                assert force == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_the_energy_is_smooth_as_a_neighbour_crosses_the_cutoff():
    # a third atom pulled out through r_max = 4 Å: its pull on the energy and its force vanish there
    # (the envelope weighs it in every sum and every softmax), with no jump as it leaves the slots
    from ase import Atoms

    potential = _escaip()

    def energy_and_force(d):
        out = predict(potential, Atoms("CuNiAu", positions=[[0, 0, 0], [2.3, 0, 0], [-d, 0, 0]]), stress=False)
        return out["energy"][0], out["forces"][2, 0]

    far, _ = energy_and_force(4.5)
    gaps = [abs(energy_and_force(4.0 - delta)[0] - far) for delta in (0.1, 0.03, 0.01, 0.001)]
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[0] > 1e-6 and gaps[-1] < 1e-9, gaps
    assert abs(energy_and_force(4.0 - 1e-4)[1]) < 1e-7 and energy_and_force(4.0 + 1e-3)[0] == far


@pytest.mark.parametrize("direct", [False, True])
def test_translation_and_permutation_leave_predictions_unchanged(rng, direct):
    assert_translation_and_permutation_invariant(_escaip(direct_forces=direct), random_alloy(rng), rng)


def test_it_is_not_rotation_equivariant_and_the_audit_says_by_how_much(rng):
    from mlip.data.readers.atoms import structure_from_atoms

    potential = _escaip()
    structures = [structure_from_atoms(random_alloy(rng), "alloy")]
    report = equivariance_audit(potential, structures, num_rotations=4).summary()
    assert all(np.isfinite(v) for v in report.values())
    assert max(report.values()) > 1e-4, report  # raw edge directions: not equivariant by construction


def test_a_lone_atom_and_an_atom_beyond_its_slots_give_finite_predictions(rng):
    from ase import Atoms

    potential = _escaip(max_neighbors=2)  # most atoms of the cell have more than 2 neighbours: nearest kept
    for atoms in (Atoms("Cu", positions=[[0, 0, 0]]), Atoms("CuNi", positions=[[0, 0, 0], [9, 0, 0]])):
        out = predict(potential, atoms, stress=False)
        assert np.isfinite(out["energy"]).all() and np.isfinite(out["forces"]).all()
    with pytest.warns(UserWarning, match="reads its nearest 2 \\(max_neighbors\\)"):
        out = predict(potential, random_alloy(rng), stress=False)
    assert np.isfinite(out["energy"]).all() and np.isfinite(out["forces"]).all()


def test_a_pair_repulsion_is_refused_beside_direct_forces():
    with pytest.raises(ValueError, match="direct_forces=false"):
        spec = {"target": "mlip.models.escaip.EScAIP", "kwargs": dict(num_elements=3, avg_num_neighbors=12.0,
                                                                     direct_forces=True)}
        Potential(build_model(spec), ELEMENTS, [0.0] * 3, model_spec=spec | {"pair_repulsion": {"kind": "zbl", "p": 5}})


def test_attention_width_must_divide_into_heads():
    with pytest.raises(ValueError, match="not a multiple of its 3 heads"):
        _escaip(channels=16, heads=3)


@pytest.mark.parametrize("direct", ["false", "true"])
def test_escaip_trains_on_the_emt_default(tmp_path, emt_file, direct):
    metrics = train(compose_train_config(tmp_path, emt_file, "model=escaip", f"model.direct_forces={direct}",
                                         "trainer.max_epochs=4"))
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    import csv

    losses = [float(r["val_loss"]) for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r.get("val_loss")]
    assert min(losses[1:]) < losses[0], losses
