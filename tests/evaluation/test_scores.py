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


def test_plots_read_in_mev_with_interaction_energies_and_full_titles():
    """Panels in the tables' meV units; the energy panel is (E - ΣE0)/N where the E0s are known;
    each panel titled with N, MAE and RMSE and the unit."""
    from mlip.evaluation.plots import _panels, _summary, parity_plot

    p = Predictions(sources=["a", "b"], natoms=np.array([2, 4]), numbers=np.array([29] * 6),
                    energy=np.array([-10.0, -20.2]), energy_ref=np.array([-10.1, -20.0]),
                    forces=np.zeros((6, 3)), forces_ref=np.full((6, 3), 0.01), forces_mask=np.ones(6, bool),
                    stress=np.full((2, 3, 3), np.nan), stress_ref=np.full((2, 3, 3), np.nan),
                    e0=np.array([-9.0, -18.0]))
    panels = _panels(p)
    assert [(name, unit) for name, unit, _, _ in panels] == [("interaction energy", "meV/atom"),
                                                             ("force component", "meV/Å")]
    np.testing.assert_allclose(panels[0][2], [-500.0, -550.0])  # 1000 (E - ΣE0) / N
    np.testing.assert_allclose(panels[0][3], [-550.0, -500.0])
    assert _summary(*panels[1][2:], "meV/Å") == "N 18 · MAE 10 · RMSE 10 meV/Å"
    assert parity_plot(p, "t")[:4] == b"\x89PNG"


def test_the_learning_curve_counts_epochs_from_one(tmp_path):
    from mlip.evaluation import plots

    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss_epoch,val_loss,val_forces_rmse\n"
                                          "0,9,1.0,,\n0,9,,0.9,0.2\n1,19,0.5,,\n1,19,,0.4,0.1\n")
    drawn = {}
    original = plots._png

    def capture(figure):
        drawn["ticks"] = figure.axes[1].get_lines()[0].get_xdata().tolist()
        return original(figure)

    plots._png = capture
    try:
        plots.learning_curve(tmp_path / "metrics.csv")
    finally:
        plots._png = original
    assert drawn["ticks"] == [1, 2]


def test_the_learning_curve_draws_one_force_curve_per_head(tmp_path, monkeypatch):
    from mlip.evaluation import plots

    (tmp_path / "metrics.csv").write_text(
        "epoch,step,val_loss,val_forces_rmse,val_foundation_forces_rmse,val_finetune_forces_rmse\n"
        "0,9,0.9,0.2,0.05,0.3\n1,19,0.4,0.1,0.06,0.12\n")
    drawn = {}
    original = plots._png

    def capture(figure):
        drawn["lines"] = {line.get_label(): line.get_ydata().tolist() for line in figure.axes[1].get_lines()}
        return original(figure)

    monkeypatch.setattr(plots, "_png", capture)
    plots.learning_curve(tmp_path / "metrics.csv")
    assert drawn["lines"] == {"finetune head": [300.0, 120.0], "foundation head": [50.0, 60.0]}
