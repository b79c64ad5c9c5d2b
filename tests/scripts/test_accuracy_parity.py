"""scripts/accuracy_parity.py: the held-out sets it builds, its recipes, and its table by hand."""

import json
import re
import sys
from pathlib import Path

import numpy as np
from ase.io import read
from tests.conftest import make_tiny_potential

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import accuracy_parity  # noqa: E402


def test_sets_are_disjoint_and_the_energy_split_extrapolates(dataset_dir, tmp_path):
    accuracy_parity.prepare(dataset_dir, tmp_path)
    for name, sizes in {"3bpa_random": (400, 50, 50), "3bpa_energy": (360, 40, 100), "acac": (450, 50, 650)}.items():
        parts = [read(tmp_path / name / f"{part}.xyz", ":") for part in ("train", "valid", "test")]
        assert tuple(map(len, parts)) == sizes
        if name.startswith("3bpa"):  # drawn from one file: no configuration in two parts
            keys = [{a.positions.tobytes() for a in part} for part in parts]
            assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    energies = {part: [a.get_potential_energy() for a in read(tmp_path / "3bpa_energy" / f"{part}.xyz", ":")]
                for part in ("train", "valid", "test")}
    assert max(energies["train"] + energies["valid"]) < min(energies["test"])


def test_recipes_are_hydra_overrides_and_the_shipped_default_is_mlip_v3():
    import yaml

    for name, overrides in accuracy_parity.RECIPES.items():
        assert all("=" in item for item in overrides), name
    command = accuracy_parity.mlip_command(Path("/d"), Path("/r"), "mlip-v3", 0, 30)
    assert "model.contraction_parametrization=coupling" in command and "model=mace" in command
    assert "model.radial_fan_in_forward=false" not in command
    assert len({c.split("=", 1)[0] for c in command[3:]}) == len(command[3:])  # each key once, the last value kept
    assert "model=tdn" in accuracy_parity.mlip_command(Path("/d"), Path("/r"), "tdn", 0, 30)
    # what a user who changes nothing gets: mlip-v3's model and module settings
    configs = Path(__file__).resolve().parents[2] / "mlip" / "configs" / "train"
    shipped = {"model": yaml.safe_load((configs / "model" / "mace.yaml").read_text()),
               "module": yaml.safe_load((configs / "train.yaml").read_text())["module"]}
    mace_parameters = [name for name, _ in make_tiny_potential().named_parameters()]

    def decaying(patterns: list[str]) -> set[str]:  # the MACE parameters a list of regexes selects
        return {name for name in mace_parameters if any(re.search(p, name) for p in patterns)}

    for item in accuracy_parity.merged(accuracy_parity.RECIPES["mlip-v3"]):
        key, value = item.split("=", 1)
        group, name = key.split(".", 1)
        value, theirs = yaml.safe_load(value), shipped[group][name]
        if isinstance(theirs, float):
            value = float(value)
        if name == "weight_decay_params":  # the shipped list also names other families' layers
            assert decaying(value) and decaying(value) == decaying(theirs), item
            continue
        assert value == theirs, item


def test_table_is_the_mean_and_half_range_over_seeds(tmp_path):
    rows = [{"set": "acac", "recipe": "r", "seed": s, "epochs": 30, "wall_s": w, "forces_rmse": f, "forces_mae": 1.0,
             "energy_rmse": e} for s, (f, e, w) in enumerate([(30.0, 0.5, 10.0), (34.0, 0.7, 20.0), (32.0, 0.6, 30.0)])]
    rows.append({"set": "acac", "recipe": "r", "seed": 3, "error": "TimeoutExpired"})
    rows += [{**r, "batch": 2, "date": "2026-12-01", "forces_rmse": 1.0} for r in rows[:2]]  # seeds 0-1 again
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = accuracy_parity.table(path)
    assert "| acac | r | 0-2 |  | 30 | 32.0 ± 2.0 | 1.0 ± 0.0 | 0.60 ± 0.10 | 20 ± 10 |" in table
    assert "| acac | r | 0-1 (repeat) | 2026-12-01 | 30 | 1.0 ± 0.0 |" in table
    assert "1 runs failed or did not finish: acac/r/3" in table
    assert accuracy_parity.seed_ranges([9, 0, 1, 2, 6, 7]) == "0-2, 6-7, 9"
    assert accuracy_parity.parse_seeds("0-2,9") == {0, 1, 2, 9}


def test_the_committed_runs_reproduce_the_documented_table():
    root = Path(__file__).resolve().parents[2]
    documented = (root / "docs" / "accuracy.md").read_text()
    table = accuracy_parity.table(root / "docs" / "accuracy_runs.jsonl")
    for line in table.splitlines()[2:]:
        assert line in documented, line
    assert np.isfinite([json.loads(r)["forces_rmse"] for r in open(root / "docs" / "accuracy_runs.jsonl")]).all()


def test_compare_is_mean_and_standard_error_by_hand(tmp_path):
    def row(recipe, batch, seed, forces, energy):
        return {"set": "acac", "recipe": recipe, "batch": batch, "seed": seed, "epochs": 30, "wall_s": 1.0,
                "forces_rmse": forces, "forces_mae": 1.0, "energy_rmse": energy}

    rows = [row("ours", 6, s, f, e) for s, (f, e) in enumerate([(40.0, 1.0), (42.0, 1.2), (44.0, 1.4)])]
    rows += [row("ref", 6, s, f, e) for s, (f, e) in enumerate([(44.0, 1.0), (46.0, 1.0), (48.0, 1.3)])]
    rows.insert(0, row("ref", 5, 0, 99.0, 9.0))  # seed 0 run earlier too: the latest run counts
    rows.append(row("ours", 5, 9, 99.0, 9.0))  # another seed: left out by the selection below
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = accuracy_parity.compare(path, ["ours:0-2"], ["ref"])
    # forces: 42 ± 2/sqrt(3) against 46 ± 2/sqrt(3), (42 - 46) / hypot(1.155, 1.155) = -2.45
    # energies: 1.2 ± 0.2/sqrt(3) against 1.1 ± sqrt(0.03)/sqrt(3) = 0.1, 0.1 / hypot(0.1155, 0.1) = +0.65
    assert "| acac | 3 / 3 | 42.0 ± 1.2 | 46.0 ± 1.2 | 0.91 | -2.4 | 1.20 ± 0.12 | 1.10 ± 0.10 | 1.09 | +0.7 |" in table
    assert "| 4 / 3 |" in accuracy_parity.compare(path, ["ours"], ["ref"])


def test_the_committed_runs_reproduce_the_documented_comparisons():
    root = Path(__file__).resolve().parents[2]
    documented = (root / "docs" / "accuracy.md").read_text()
    runs = root / "docs" / "accuracy_runs.jsonl"
    for ours, reference in ((["mlip-v4:9-20"], ["mace-torch:9-20"]),
                            (["mlip-v3:0-8", "mlip-v4:9-20"], ["mace-torch:0-20"]),
                            (["mlip-stage-two:18-20"], ["mace-torch-stage-two:18-20"])):
        for line in accuracy_parity.compare(runs, ours, reference).splitlines()[2:]:
            assert line in documented, line


def test_stage_two_starts_at_three_quarters_on_both_sides():
    from hydra.utils import instantiate

    from tests.conftest import compose_train_config

    command = accuracy_parity.mlip_command(Path("/d"), Path("/r"), "mlip-stage-two", 0, 30)
    override = next(item for item in command if item.startswith("stage_two="))
    stage = instantiate(compose_train_config("/tmp/run", "x.xyz", override).stage_two)
    assert (stage.start_epoch, stage.weights, stage.lr) == (21, {"energy": 1000.0, "forces": 100.0}, 1e-3)
    assert accuracy_parity.stage_two_start(80) == 60 and accuracy_parity.stage_two_start(2) == 1


def test_a_variant_extends_a_recipe_and_seconds_bound_the_run_by_wall_clock():
    name = accuracy_parity.add_variant("facet-wide=facet:model.grid_hidden=256,model.radial_mlp=[8,8]")
    command = accuracy_parity.mlip_command(Path("/d"), Path("/r"), name, 0, 30, seconds=3725)
    assert "model=facet" in command and "model.grid_hidden=256" in command and "model.radial_mlp=[8,8]" in command
    assert "trainer.max_epochs=100000" in command and "+trainer.max_time=00:01:02:05" in command
    assert "trainer.max_epochs=30" in accuracy_parity.mlip_command(Path("/d"), Path("/r"), name, 0, 30)
