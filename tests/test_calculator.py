"""Model file round trip and the ASE calculator."""

import copy
import re

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.optimize import BFGS
from safetensors import safe_open
from safetensors.torch import save_file

from mlip.calculator import MLIPCalculator
from mlip.data.graph import structure_to_graph
from mlip.data.readers.atoms import structure_from_atoms
from mlip.data.structure import DataError
from mlip.export import load_model, potential_from_checkpoint, read_metadata, save_model
from mlip.models.potential import UnknownElementError
from tests.conftest import make_tiny_potential, random_alloy, random_cluster


def _results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "energies": atoms.get_potential_energies()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def test_save_load_round_trip_matches_to_1e_6(tmp_path, tiny_potential, rng):
    path = save_model(tiny_potential, tmp_path / "model.safetensors")
    assert read_metadata(path)["elements"] == [28, 29, 79]
    before, after = MLIPCalculator(tiny_potential), MLIPCalculator(path)
    for atoms in (random_alloy(rng), random_cluster(rng)):
        a, b = _results(before, atoms), _results(after, atoms)
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-6, atol=1e-9), key
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left behind"


def test_float32_and_float64_agree_and_per_atom_energies_sum(tmp_path, tiny_potential, rng):
    path = save_model(tiny_potential, tmp_path / "model.safetensors")
    atoms = random_alloy(rng)
    r64, r32 = _results(MLIPCalculator(path, dtype="float64"), atoms), _results(MLIPCalculator(path, dtype="float32"), atoms)
    assert r32["energy"] == pytest.approx(r64["energy"], rel=1e-5)
    assert np.allclose(r32["forces"], r64["forces"], atol=1e-4)
    assert r64["energies"].sum() == pytest.approx(r64["energy"], rel=1e-12)
    assert load_model(path, dtype="float32").dtype == torch.float32


def test_a_float32_model_file_keeps_its_e0s_exact(tmp_path, tiny_potential, rng):
    """E0s of a DFT code (-1029.488321 eV) are float64 in the model, the file and every cast:
    float32 would round them by 4e-5 eV, a shift of every energy no later cast undoes."""
    exact = torch.tensor([-1029.488321, -0.3184057, -37.71143091], dtype=torch.float64)
    with torch.no_grad():
        tiny_potential.e0s.copy_(exact)
    single = tiny_potential.to(torch.float32)
    assert single.dtype == torch.float32 and single.e0s.dtype == torch.float64
    path = save_model(single, tmp_path / "model32.safetensors")
    loaded = load_model(path)
    assert loaded.dtype == torch.float32 and torch.equal(loaded.e0s, exact)
    assert torch.equal(load_model(path, dtype="float64").e0s, exact)
    # the E0 part of an energy is the exact sum, in float64 as in float32
    atoms = random_alloy(rng)
    e0 = sum(float(exact[tiny_potential.elements.tolist().index(z)]) for z in atoms.numbers)
    for dtype in ("float64", "float32"):
        model = load_model(path, dtype=dtype)
        out = model(structure_to_graph(structure_from_atoms(atoms, "t"), model.r_max), compute_forces=False)
        assert float(out["e0_energy"]) == pytest.approx(e0, rel=0, abs=1e-9), dtype


def _assert_unknown_elements_and_nan_are_refused(calc, rng) -> None:
    bad = random_alloy(rng)
    bad.numbers[0] = 26
    bad.calc = calc
    with pytest.raises(UnknownElementError, match="Fe"):
        bad.get_potential_energy()
    nan = random_alloy(rng)
    nan.positions[1, 0] = np.nan
    nan.calc = calc
    with pytest.raises(DataError, match="non-finite .* atom 1"):
        nan.get_potential_energy()


def test_molecules_have_no_stress_and_bad_atoms_are_refused(tiny_potential, rng):
    calc = MLIPCalculator(tiny_potential)
    molecule = random_cluster(rng)
    molecule.calc = calc
    assert np.isfinite(molecule.get_potential_energy())
    assert molecule.get_potential_energy() == molecule.get_potential_energy(force_consistent=True)
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        molecule.get_stress()
    _assert_unknown_elements_and_nan_are_refused(calc, rng)


def test_a_non_finite_prediction_is_refused_by_the_calculator_and_by_predict(rng):
    from mlip.evaluation.predict import predict

    potential = make_tiny_potential().double()
    with torch.no_grad():
        potential.shift.fill_(float("nan"))  # the energy is NaN; the forces do not see the shift
    atoms = random_alloy(rng)
    atoms.calc = MLIPCalculator(potential, cuda_graphs=False)
    with pytest.raises(DataError, match=r"MLIPCalculator: the model predicts a non-finite energy$"):
        atoms.get_potential_energy()
    with pytest.raises(DataError, match=r"^x: the model predicts a non-finite energy$"):
        predict(potential, [structure_from_atoms(atoms, "x")])


def test_a_model_file_with_nan_weights_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file

    path = save_model(make_tiny_potential(), tmp_path / "model.safetensors")
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and k.endswith("weight"))
    tensors[name][..., 0] = float("inf")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=rf"model.safetensors: weight {re.escape(name)} holds NaN or inf"):
        load_model(path)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an mlip model file"):
        load_model(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.safetensors")


def test_trained_model_file_matches_its_checkpoint_and_bfgs_lowers_energy(trained_run, rng):
    model_file = trained_run / "model.safetensors"
    best = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    atoms = random_alloy(rng, rattle=0.15)
    from_file = _results(MLIPCalculator(model_file), atoms)
    from_ckpt = _results(MLIPCalculator(potential_from_checkpoint(best)), atoms)
    assert from_file["energy"] == pytest.approx(from_ckpt["energy"], rel=1e-10)

    atoms.calc = MLIPCalculator(model_file)
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=30)
    assert atoms.get_potential_energy() < start - 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_calculator_matches_cpu(tiny_potential, rng, tmp_path):
    path = save_model(tiny_potential, tmp_path / "model.safetensors")
    atoms = random_alloy(rng)
    cpu, gpu = _results(MLIPCalculator(path), atoms), _results(MLIPCalculator(path, device="cuda"), atoms)
    for key in cpu:
        assert np.allclose(cpu[key], gpu[key], rtol=1e-8, atol=1e-10), key


def test_the_ema_copy_of_a_wide_model_exports_and_loads(tmp_path, rng):
    # a deep copy of e3nn's compiled ℓ=3 product holds constants as buffers; they are not
    # weights, are not written, and an older file that holds them still loads
    potential = make_tiny_potential(max_ell=3, hidden_irreps="16x0e+16x1o")
    ema_copy = copy.deepcopy(potential)
    assert any("_tensor_constant" in k for k in ema_copy.state_dict())
    path = save_model(ema_copy, tmp_path / "model.safetensors")
    graph = structure_to_graph(structure_from_atoms(random_alloy(rng), "t"), potential.r_max)
    torch.testing.assert_close(load_model(path)(graph)["forces"], potential(graph)["forces"], rtol=1e-12, atol=1e-12)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    old = {k: v.contiguous() for k, v in ema_copy.state_dict().items()}  # as files written before the fix
    save_file(old, str(tmp_path / "old.safetensors"), metadata=metadata)
    load_model(tmp_path / "old.safetensors")


@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
def test_the_device_neighbour_list_gives_the_host_results_along_an_md_run(tiny_potential, rng, periodic):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = random_alloy(rng, repeat=(2, 1, 1)) if periodic else random_cluster(rng, n=9)
    host = MLIPCalculator(tiny_potential, neighbour_list="host")
    device = MLIPCalculator(tiny_potential, neighbour_list="device", skin=0.5)
    atoms.calc = device
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * 0.3)
    dynamics = VelocityVerlet(atoms, 2 * units.fs)
    for _ in range(15):
        dynamics.run(2)
        a, b = _results(host, atoms), _results(device, atoms)
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-12, atol=1e-12), key
    assert 1 <= device.neighbours.builds < 15  # kept across calls, rebuilt as atoms moved


def test_the_device_path_refuses_collapsed_atoms_unknown_elements_and_nan(tiny_potential, rng):
    calc = MLIPCalculator(tiny_potential, neighbour_list="device")
    atoms = random_alloy(rng)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.positions[3] = atoms.positions[2] + 0.001
    with pytest.raises(DataError, match="atoms (2 and 3|3 and 2) are 0.00. Å apart"):
        atoms.get_potential_energy()
    _assert_unknown_elements_and_nan_are_refused(calc, rng)
    with pytest.raises(ValueError, match="neighbour_list"):
        MLIPCalculator(tiny_potential, neighbour_list="gpu")
