"""scripts/benchmark_training.py: the phase breakdown of a run and the table, by hand."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import benchmark_training  # noqa: E402


def test_summary_of_phase_times(tmp_path):
    times = {"fit_start": 105.0, "first_epoch_start": 108.0, "first_step_end": 130.0, "fit_end": 170.0, "test_start": 171.0, "test_end": 172.5,
             "epochs": [{"epoch": 0, "steps": 40, "train_s": 30.0, "validation_s": 2.0},
                        {"epoch": 1, "steps": 40, "train_s": 0.4, "validation_s": 0.1},
                        {"epoch": 2, "steps": 40, "train_s": 0.6, "validation_s": 0.1},
                        {"epoch": 3, "steps": 20, "train_s": 0.1, "validation_s": 0.1}]}
    (tmp_path / "phase_times.json").write_text(json.dumps(times))
    row = benchmark_training.summarise("mlip", tmp_path, launched=100.0, wall=80.0, n_train=400, epochs=4)
    assert row["fit_start_s"] == 5.0 and row["first_epoch_s"] == 8.0
    assert row["first_step_s"] == 30.0 and row["train_s"] == 31.1 and row["validation_s"] == 2.3
    assert row["test_s"] == 1.5 and row["structures_per_s"] == 20.0
    assert row["step_ms"] == 10.0  # the median of 10, 15 and 5 ms over the epochs after the first
    assert "in_epoch_step_ms" not in row  # nothing logged
    logs = tmp_path / "logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,structures_per_s,train_loss_step\n0,9,2000.0,\n0,9,,0.5\n"
                                      "0,19,1000.0,\n1,49,2500.0,\n2,89,500.0,\n2,99,2000.0,\n2,109,2000.0,\n"
                                      "3,129,250.0,\n3,139,2200.0,\n")
    row = benchmark_training.summarise("mlip", tmp_path, launched=100.0, wall=80.0, n_train=400, epochs=4)
    assert row["in_epoch_step_ms"] == 10.0  # 20 structures a step (400 over the last epoch's 20 steps) at 2000/s
    assert row["epoch_start_step_ms"] == 53.33  # first intervals of epochs 2 and 3: 20 structures at 375/s (median)
    startup = {"run": "graphed step alone (ceiling)", "imports": 3.0, "data": 1.0, "model": 0.5, "first_step": 20.0,
               "first_validation": 2.0, "warm_steps": 0.1, "step_ms": 4.5}
    table = benchmark_training.table([startup, row, {"run": "mace-torch", "wall_s": 160.0}], 4, 400)
    assert "startup by hand, s: imports 3.0, data 1.0, model 0.5, first_step 20.0, first_validation 2.0" in table
    assert "| mlip | 80.0 | 5.0 | 8.0 | 30.0 | 31.1 | 2.3 | 1.5 | 10.0 | 10.0 | 53.33 | 20.0 |" in table
    assert "steady step / ceiling: 45%" in table and "within epochs / ceiling: 45%" in table
    assert "host ms" not in table  # none timed
    assert "mace-torch / mlip wall-clock: 2.00x" in table
