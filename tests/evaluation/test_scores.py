"""Error metrics against a hand computation on a two-structure example."""

import math

import numpy as np
import pytest

from mlip.evaluation.scores import Predictions, force_cosine, score


def _example(**changes):
    # structure 0: Cu2, periodic; structure 1: Cu + O, a molecule whose O atom is unlabelled
    values = dict(
        sources=["a#0", "a#1"],
        natoms=np.array([2, 2]),
        numbers=np.array([29, 29, 29, 8]),
        energy=np.array([-1.0, -2.5]),
        energy_ref=np.array([-1.01, -2.0]),
        forces=np.array([[1.0, 0, 0], [0, 1.0, 0], [0.01, 0, 0], [5.0, 5.0, 5.0]]),
        forces_ref=np.array([[1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0], [0.0, 0.0, 0.0]]),
        forces_mask=np.array([True, True, True, False]),
        stress=np.stack([np.eye(3) * 0.1, np.full((3, 3), np.nan)]),
        stress_ref=np.stack([np.zeros((3, 3)), np.full((3, 3), np.nan)]),
    )
    values.update(changes)
    return Predictions(**values)


def test_metrics_equal_a_hand_computation():
    out = score(_example())
    assert out["structures"] == 2 and out["atoms"] == 4
    assert out["energy_mae"] == pytest.approx((0.01 + 0.5) / 2)
    assert out["energy_rmse"] == pytest.approx(math.sqrt((0.01**2 + 0.5**2) / 2))
    assert out["energy_per_atom_mae"] == pytest.approx((0.005 + 0.25) / 2)
    # 9 labelled components: errors 0,0,0 | -1,1,0 | 0.01,0,0; the O atom is masked
    assert out["forces_mae"] == pytest.approx(2.01 / 9)
    assert out["forces_rmse"] == pytest.approx(math.sqrt(2.0001 / 9))
    # cosines: 1 (parallel), 0 (perpendicular), 0 (a zero reference)
    assert out["force_cosine"] == pytest.approx(1 / 3)
    assert out["per_element"] == {"Cu": {"forces_mae": pytest.approx(2.01 / 9),
                                         "forces_rmse": pytest.approx(math.sqrt(2.0001 / 9)), "atoms": 3}}
    assert out["stress_mae"] == pytest.approx(0.3 / 9) and out["stress_rmse"] == pytest.approx(math.sqrt(0.03 / 9))
    # EFwT: structure 0 has |ΔE| = 0.01 < 0.02 but a force error of 1 > 0.03; structure 1 fails on energy
    assert out["efwt"] == 0.0


def test_efwt_counts_structures_within_both_thresholds():
    forces = np.array([[1.0, 0, 0], [1.02, 0, 0], [0.01, 0, 0], [5.0, 5.0, 5.0]])
    assert score(_example(forces=forces))["efwt"] == 0.5
    unlabelled = score(_example(energy_ref=np.array([np.nan, np.nan])))
    assert "energy_mae" not in unlabelled and "efwt" not in unlabelled and "forces_mae" in unlabelled


def test_force_cosine_is_orientation_only():
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(force_cosine(3 * a, a), [1.0, 0.0])
    np.testing.assert_allclose(force_cosine(-a, a), [-1.0, 0.0])
