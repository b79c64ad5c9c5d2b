"""mace-torch models converted to ours predict what mace-torch predicts (the oracle files were
written by scripts/make_mace_torch_oracle.py in mace-torch 0.3.16's own environment), and
what we cannot express, or cannot read safely, is refused."""

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

from mlip.calculator import MLIPCalculator
from mlip.cli.convert import convert
from mlip.convert.mace_torch import ConversionError, check_supported, convert_mace_torch
from mlip.convert.pickled_module import PickledModuleError, Record, read_pickled_module, record_class
from mlip.export import load_model, read_metadata, save_model

ORACLE = Path(__file__).parent / "mace_torch_oracle"
REFERENCES = json.loads((ORACLE / "references.json").read_text())
RTOL = 1e-6


@pytest.fixture(scope="module")
def structures():
    return read(ORACLE / "structures.extxyz", ":")


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_converted_model_predicts_what_mace_torch_predicts(name, structures, tmp_path):
    reference = REFERENCES[name]
    potential = convert_mace_torch(ORACLE / reference["model"], head=reference["head"])
    path = save_model(potential, tmp_path / "converted.safetensors")
    calc = MLIPCalculator(path, device="cpu", dtype="float64")
    e0 = dict(zip(potential.elements.tolist(), potential.e0s.tolist()))
    assert any(atoms.pbc.all() for atoms in structures) and any(not atoms.pbc.any() for atoms in structures)
    for atoms, row in zip(structures, reference["predictions"]):
        atoms = atoms.copy()
        atoms.calc = calc
        # relative to the interaction energy: the E0s alone would make any energy agree to 1e-6
        interaction = row["energy"] - sum(e0[int(z)] for z in atoms.numbers)
        assert abs(atoms.get_potential_energy() - row["energy"]) <= RTOL * abs(interaction)
        forces = np.asarray(row["forces"])
        assert np.abs(atoms.get_forces() - forces).max() <= RTOL * np.abs(forces).max()
        if "stress" in row:
            stress = np.asarray(row["stress"])
            assert np.abs(atoms.get_stress() - stress).max() <= RTOL * np.abs(stress).max()


def test_converted_file_keeps_hyperparameters_and_dtype(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"input": str(ORACLE / "scaleshift_residual_nu2_l2_f32.model"),
                            "output": str(tmp_path / "m.safetensors"), "head": None, "framework": "mace-torch"})
    path = convert(cfg)
    metadata = read_metadata(path)
    kwargs = metadata["model_spec"]["kwargs"]
    assert metadata["dtype"] == "float32"
    assert kwargs["hidden_irreps"] == "6x0e+6x1o+6x2e" and kwargs["correlation"] == [2, 2]
    assert kwargs["max_ell"] == 2 and kwargs["residual_first"] is True
    assert metadata["extra"]["converted_from"]["framework"] == "mace-torch"
    assert load_model(path).elements.tolist() == [1, 6, 7, 8]


def test_several_heads_need_a_choice():
    model = ORACLE / "scaleshift_two_heads_nu2_l1_f64.model"
    with pytest.raises(ConversionError, match=r"heads \['pbe', 'r2scan'\].*head=<name>"):
        convert_mace_torch(model)
    with pytest.raises(ConversionError, match="no head 'hse'"):
        convert_mace_torch(model, head="hse")


def _record(name="scaleshift_residual_nu3_l1_f64"):
    return read_pickled_module(ORACLE / f"{name}.model")


@pytest.mark.parametrize("flag, value", [("use_so3", True), ("use_last_readout_only", True),
                                         ("keep_last_layer_irreps", True)])
def test_architecture_options_we_lack_are_refused_by_name(flag, value):
    model = _record()
    model.state[flag] = value
    with pytest.raises(ConversionError, match=flag):
        check_supported(model)


@pytest.mark.parametrize("part, reason", [("joint_embedding", "charge and spin"), ("les", "Ewald")])
def test_foundation_parts_we_lack_are_refused_with_the_reason(part, reason, tmp_path):
    model = _record()
    model.state["_modules"][part] = record_class("mace.modules.embeddings", "GenericJointEmbedding")()
    with pytest.raises(ConversionError, match=f"not supported: {part} .*{reason}"):
        check_supported(model)


def test_unsupported_blocks_are_refused_by_name():
    model = _record()
    interactions = model.child("interactions")
    block = interactions.children["1"]
    attention = record_class("mace.modules.blocks", "RealAgnosticAttResidualInteractionBlock")()
    attention.state = block.state
    interactions.state["_modules"]["1"] = attention
    with pytest.raises(ConversionError, match="RealAgnosticAttResidualInteractionBlock"):
        check_supported(model)
    model = _record()
    model.state["_modules"]["pair_repulsion_fn"] = record_class("mace.modules.radial", "SoftTransform")()
    with pytest.raises(ConversionError, match="SoftTransform"):
        check_supported(model)
    model = _record()
    model.child("radial_embedding").state["_modules"]["distance_transform"] = record_class(
        "mace.modules.radial", "SoftTransform")()
    with pytest.raises(ConversionError, match="distance_transform .*SoftTransform"):
        check_supported(model)
    model = _record("scaleshift_density_agnesi_zbl_nu3_l1_f64")  # a plain block after the first
    model.child("interactions").state["_modules"]["1"] = _record("mace_plain_first_nu1_l0_f64").child(
        "interactions").children["0"]
    with pytest.raises(ConversionError, match="interactions.1 is a RealAgnosticInteractionBlock"):
        check_supported(model)


def test_standard_and_density_blocks_mix_layer_by_layer(structures):
    """Files trained before late 2024 start with a standard block before density blocks: each layer
    keeps its own normalisation (the first block here swapped for another file's, the rest as is)."""
    model = _record("mace_density_residual_zbl_nu2_l1_f64")
    check_supported(model)
    from mlip.convert.mace_torch import model_kwargs

    assert model_kwargs(model, 1)["interaction"] == ["density", "density"]
    model.child("interactions").state["_modules"]["0"] = _record("scaleshift_residual_nu2_l2_f32").child(
        "interactions").children["0"]
    check_supported(model)
    assert model_kwargs(model, 1)["interaction"] == ["standard", "density"]


def test_pickle_payload_in_a_model_file_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.model"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(ConversionError, match="not a pickled module"):
        convert_mace_torch(path)
    assert not marker.exists()
    # a real module with the payload inside its state: read as inert records, still nothing runs
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(tmp_path / "mixed.model", "w") as out:
        for item in source.namelist():
            data = source.read(item)
            if item.endswith("data.pkl"):
                data = pickle.dumps([Payload(), Payload()], protocol=2)
            out.writestr(item, data)
    with pytest.raises(ConversionError):
        convert_mace_torch(tmp_path / "mixed.model")
    assert not marker.exists()
    assert isinstance(record_class("os", "system")("touch", str(marker)), Record) and not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_files_that_are_not_model_archives_are_refused(tmp_path, content):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match="bad.model") as refused:
        convert_mace_torch(path)
    assert str(refused.value).count(str(path)) == 1  # named once


def test_truncated_storage_is_refused(tmp_path):
    source = ORACLE / "mace_plain_first_nu1_l0_f64.model"
    path = tmp_path / "short.model"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w") as out:
        for item in archive.namelist():
            data = archive.read(item)
            if "/data/" in item and len(data) > 8:
                data = data[: len(data) // 2]
            out.writestr(item, data)
    with pytest.raises(ConversionError, match="storage"):
        convert_mace_torch(path)
    with pytest.raises(PickledModuleError):
        read_pickled_module(path)


@pytest.mark.parametrize("name", ["scaleshift_residual_nu3_l1_f64", "mace_plain_first_nu3_l1_3layers_f64"])
def test_mace_torch_learns_its_product_on_our_coupling_chains(name):
    """mace-torch's weights act through its chains U; ours, with contraction_parametrization=coupling,
    through `coupling_frame`. Written on our basis (and with the per-component normalisation
    sqrt(2ℓ+1) taken out), its chains are ours up to order and sign, so Adam moves both alike."""
    from e3nn import o3

    from mlip.convert.mace_torch import coupling_coordinates
    from mlip.nn.symmetric_contraction import coupling_frame

    per_channel = o3.Irreps("0e+1o+2e")  # the oracle models' edge harmonics, ℓ ≤ 2
    checked = 0
    for t, product in _record(name).child("products").children.items():
        contractions = product.child("symmetric_contractions").child("contractions").children.values()
        for contraction, ir_out in zip(contractions, [o3.Irrep("0e"), o3.Irrep("1o")]):
            for nu in range(1, int(contraction.attr("correlation")) + 1):
                theirs = coupling_coordinates(contraction.tensor(f"U_matrix_{nu}"), per_channel, nu, ir_out, name)
                theirs = theirs / ir_out.dim**0.5
                ours = coupling_frame(per_channel, nu, ir_out)
                assert theirs.shape == ours.shape, (t, ir_out, nu)
                # each of their chains is one of ours or its negative, each of ours used once
                distance = torch.minimum(torch.cdist(theirs, ours), torch.cdist(theirs, -ours))
                assert _is_permutation(distance < 1e-9), (t, ir_out, nu)
                checked += 1
    assert checked >= 9


def _is_permutation(matched: torch.Tensor) -> bool:
    """A one-to-one assignment of rows to columns exists (zero chains match each other)."""
    from scipy.optimize import linear_sum_assignment

    rows, columns = linear_sum_assignment(-matched.double().numpy())
    return len(rows) == matched.shape[0] == matched.shape[1] and bool(matched[rows, columns].all())


def test_nan_weights_are_refused_by_name():
    from mlip.convert.mace_torch import _convert

    model = _record()
    model.child("readouts").children["0"].child("linear").tensor("weight")[0] = float("nan")
    with pytest.raises(ConversionError, match=r"^readouts\.0\.linear\.weight: the file's weights hold NaN or inf"):
        _convert(model, None)


@pytest.mark.parametrize("name", ["scaleshift_density_agnesi_zbl_nu3_l1_f64", "mace_density_residual_zbl_nu2_l1_f64"])
def test_zbl_counts_and_sits_where_mace_torch_puts_it(name, structures):
    """The oracle's cells hold pairs inside the ZBL range; without ZBL, or with it on the wrong side of
    ScaleShiftMACE's scale, the converted model misses mace-torch's energies."""
    reference = REFERENCES[name]
    potential = convert_mace_torch(ORACLE / reference["model"]).double()
    assert potential.pair_repulsion_scaled == name.startswith("scaleshift")
    assert potential.model.interactions[0].density is not None

    def worst(p):
        e0 = dict(zip(p.elements.tolist(), p.e0s.tolist()))
        errors = []
        for atoms, row in zip(structures, reference["predictions"]):
            atoms = atoms.copy()
            atoms.calc = MLIPCalculator(p, device="cpu", dtype="float64")
            interaction = row["energy"] - sum(e0[int(z)] for z in atoms.numbers)
            errors.append(abs(atoms.get_potential_energy() - row["energy"]) / abs(interaction))
        return max(errors)

    assert worst(potential) <= RTOL
    if potential.pair_repulsion_scaled:
        potential.pair_repulsion_scaled = False
        assert worst(potential) > 1e-4
        potential.pair_repulsion_scaled = True
    potential.pair_repulsion = None
    assert worst(potential) > 1e-4


def test_every_head_kept_and_chosen_at_run_time(structures, tmp_path):
    """head=all: one model file with both heads; each, chosen in the calculator (at construction or
    later) or in mlip-eval, predicts what mace-torch predicts for it."""
    name = "scaleshift_two_heads_nu2_l1_f64"
    potential = convert_mace_torch(ORACLE / f"{name}.model", head="all")
    assert potential.heads == ["pbe", "r2scan"] and potential.head == "pbe"
    path = save_model(potential, tmp_path / "both.safetensors")
    loaded = load_model(path)
    assert loaded.heads == ["pbe", "r2scan"] and loaded.head == "pbe"
    switching = MLIPCalculator(path, device="cpu", dtype="float64")
    for head in ("r2scan", "pbe", "r2scan"):
        reference = REFERENCES[f"{name}@{head}"]
        chosen = MLIPCalculator(path, device="cpu", dtype="float64", head=head)
        switching.select_head(head)
        e0 = dict(zip(chosen.potential.elements.tolist(), chosen.potential.e0s.tolist()))
        for atoms, row in zip(structures, reference["predictions"]):
            interaction = row["energy"] - sum(e0[int(z)] for z in atoms.numbers)
            for calc in (chosen, switching):
                atoms = atoms.copy()
                atoms.calc = calc
                assert abs(atoms.get_potential_energy() - row["energy"]) <= RTOL * abs(interaction), head
                forces = np.asarray(row["forces"])
                assert np.abs(atoms.get_forces() - forces).max() <= RTOL * np.abs(forces).max()
    with pytest.raises(ValueError, match="no head 'mp'.*pbe"):
        switching.select_head("mp")
    with pytest.raises(ValueError, match="single head"):
        convert_mace_torch(ORACLE / f"{name}.model", head="pbe").select_head("pbe")
