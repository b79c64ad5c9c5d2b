"""mace-torch models (``.model`` files of mace-torch 0.3.x) as our `MACE`, weight for weight.

The file is read by `read_pickled_module` (nothing of mace-torch or e3nn 0.4.4 is imported
or run). Each of its blocks maps onto ours:

| mace-torch                                    | ours                                         |
|-----------------------------------------------|----------------------------------------------|
| ``node_embedding.linear``                     | ``embedding.linear``                         |
| ``radial_embedding`` (Bessel x polynomial)    | ``radial_embedding`` (frequencies copied)    |
| ``interactions.t.linear_up / linear``         | ``interactions.t.linear_up / linear``        |
| ``interactions.t.conv_tp_weights`` (e3nn MLP) | ``interactions.t.radial`` (1/sqrt(fan-in) and the activation constant folded into the weights; rows in our path order) |
| ``interactions.t.skip_tp`` (residual)         | ``products.t.skip``                          |
| ``interactions.0.skip_tp`` (non-residual)     | ``interactions.0.element_linear``            |
| ``products.t.symmetric_contractions``         | ``products.t.contraction`` (its U tensors projected onto our orthonormal basis) |
| ``products.t.linear``, ``readouts``           | ``products.t.linear``, ``readouts``          |
| ``atomic_energies_fn``, ``scale_shift``       | the `Potential`'s E0s, scale and shift       |
| ``interactions.t.density_fn`` (density blocks)| ``interactions.t.density`` (`MACE(interaction="density")`) |
| ``radial_embedding.distance_transform`` (Agnesi) | ``radial_embedding.transform`` (its constants and covalent radii) |
| ``pair_repulsion_fn`` (ZBL)                   | the `Potential`'s ``pair_repulsion``, inside scale and shift for ``ScaleShiftMACE`` |
| ``interactions.t`` non-linear block (MH-1): ``conv_tp_weights``, ``density_fn`` (LayerNorm MLPs), ``source/target_embedding``, ``linear_res``, ``linear_1``, ``linear_2``, ``alpha``, ``beta`` | ``interactions.t`` (`NonLinearInteractionBlock`: the same names; the gate's constants folded into ``linear_2``) |
| ``interactions.t.skip_tp`` (non-linear block) | ``products.t.skip`` (a plain linear)         |
| every head of a multi-head file (``head="all"``) | ``readouts`` with one output per head, the `Potential`'s ``head_e0s/scale/shift`` |

What we cannot express exactly is refused by `ConversionError`, naming it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
from e3nn import o3

from mlip.convert.pickled_module import PickledModuleError, Record, read_pickled_module
from mlip.export import first_nonfinite
from mlip.models.potential import Potential
from mlip.models.registry import build_model
from mlip.nn.irreps import channel_irreps
from mlip.nn.pair_repulsion import SCREENING
from mlip.nn.radial import NormalizedSiLU
from mlip.nn.symmetric_contraction import product_basis

MODEL_KINDS = ("mace.modules.models.MACE", "mace.modules.models.ScaleShiftMACE")
RESIDUAL = "mace.modules.blocks.RealAgnosticResidualInteractionBlock"
PLAIN = "mace.modules.blocks.RealAgnosticInteractionBlock"
DENSITY_RESIDUAL = "mace.modules.blocks.RealAgnosticDensityResidualInteractionBlock"
DENSITY = "mace.modules.blocks.RealAgnosticDensityInteractionBlock"
NONLINEAR = "mace.modules.blocks.RealAgnosticResidualNonLinearInteractionBlock"
RESIDUAL_KINDS = (RESIDUAL, DENSITY_RESIDUAL)
DENSITY_KINDS = (DENSITY, DENSITY_RESIDUAL)
INTERACTION_OF = {DENSITY: "density", DENSITY_RESIDUAL: "density", NONLINEAR: "nonlinear"}
AGNESI = "mace.modules.radial.AgnesiTransform"
ZBL = "mace.modules.radial.ZBLBasis"
KNOWN_CHILDREN = {"node_embedding", "radial_embedding", "spherical_harmonics", "atomic_energies_fn",
                  "interactions", "products", "readouts", "scale_shift", "pair_repulsion_fn"}
# options of mace-torch's MACE that change the architecture when set
REFUSED_FLAGS = {"use_so3": False, "use_last_readout_only": False, "lammps_mliap": False,
                 "keep_last_layer_irreps": False}
# parts of mace-torch models we do not express, and why (refused by name)
UNSUPPORTED_PARTS = {
    "joint_embedding": "the total-charge and spin embedding of OMOL-0-style models",
    "embedding_readout": "a readout of the charge/spin embedding",
    "les": "latent Ewald summation (long-range electrostatics)",
    "les_readouts": "latent Ewald summation (long-range electrostatics)",
    "field_feats": "external-field features",
}
# ZBL's screening coefficients c_k (mace-torch's buffer ``c``), which ours fixes
ZBL_COEFFICIENTS = [c for c, _ in SCREENING]
SILU = "torch.nn.functional.silu"
# the part of a U tensor outside the symmetric equivariant space, relative to its largest entry, that
# counts as round-off of the stored U (a float32 file's U carries ~1e-7)
PROJECTION_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-5}  # ℓ = 3, ν = 3 couplings reach 3e-9 in float64


class ConversionError(ValueError):
    """A mace-torch file holding something our MACE cannot express exactly (or not a mace-torch model)."""


def irreps(record: Any) -> o3.Irreps:
    """An e3nn ``Irreps`` from its pickled record (a tuple of ``(mul, (l, p))``)."""
    if isinstance(record, (str, o3.Irreps)):
        return o3.Irreps(record)
    if not isinstance(record, Record) or not record.kind.endswith("_irreps.Irreps"):
        raise ConversionError(f"expected e3nn Irreps, found {record!r}")
    items = []
    for mul_ir in record.args[0]:
        mul, ir = mul_ir.args[0] if isinstance(mul_ir, Record) else mul_ir
        l, p = ir.args[0] if isinstance(ir, Record) else ir
        items.append((int(mul), (int(l), int(p))))
    return o3.Irreps(items)


def _kind_name(value: Any) -> str:
    return value.kind if isinstance(value, Record) else getattr(value, "kind", type(value).__name__)


def activation_constant(act: Record, where: str) -> float:
    """The constant of e3nn's ``normalize2mom(silu)`` stored in the file (SiLU only)."""
    if not act.kind.endswith("normalize2mom"):
        raise ConversionError(f"{where}: activation {act.kind} is not e3nn's normalised SiLU")
    function = act.attr("f")
    if _kind_name(function) != SILU:
        raise ConversionError(f"{where}: activation {_kind_name(function)} is not SiLU")
    return float(act.attr("cst"))


def radial_weights(mlp: Record, row_order: list[int], mul: int, where: str) -> list[torch.Tensor]:
    """Our `RadialMLP` weights [out, in] (``fan_in_forward``: divided by sqrt(in) in its forward)
    from e3nn's ``FullyConnectedNet`` with SiLU.

    e3nn's layer: ``x @ W / sqrt(h_in var_in)``, then ``c act(.) sqrt(var_out)`` on hidden layers;
    ours: ``x @ W.T / sqrt(h_in)`` and ``c' act(.)``. The factors c sqrt(var_out) / c' go into the
    next layer. Keeping e3nn's 1/sqrt(h_in) in the forward keeps mace-torch's parametrisation, so a
    converted model fine-tunes as it would in mace-torch (folded into the weights, Adam would move
    the layer sqrt(h_in) times faster). ``row_order[p]`` is the mace-torch path of our path p;
    each path has ``mul`` columns.
    """
    layers = [mlp.child(f"layer{k}") for k in range(len(mlp.children))]
    weights, carried = [], 1.0
    for k, layer in enumerate(layers):
        var_in, var_out = layer.attr("var_in"), layer.attr("var_out")
        weight = layer.tensor("weight").to(torch.float64)
        last = k == len(layers) - 1
        acts = layer.children.get("act")
        if last != (acts is None):
            raise ConversionError(f"{where}: a radial MLP with an activation after its last layer (out_act)")
        weight = weight / math.sqrt(var_in / var_out if last else var_in)
        weight = (weight * carried).T.contiguous()
        if not last:
            carried = activation_constant(acts, where) * math.sqrt(var_out) / NormalizedSiLU.SCALE
        weights.append(weight)
    rows = torch.tensor([p * mul + c for p in row_order for c in range(mul)])
    weights[-1] = weights[-1].index_select(0, rows)
    return weights


def path_order(conv_tp: Record, ours: list[tuple], where: str) -> list[int]:
    """For each of our convolution paths, the index of the same path in mace-torch's tensor product."""
    theirs = [tuple(int(v) for v in ins.args[:3]) for ins in conv_tp.attr("instructions")]
    modes = {ins.args[3] for ins in conv_tp.attr("instructions")}
    if modes != {"uvu"}:
        raise ConversionError(f"{where}: tensor-product paths of mode {sorted(modes)}, ours are channel-wise (uvu)")
    keys = [tuple(ins[:3]) for ins in ours]
    if sorted(keys) != sorted(theirs):
        raise ConversionError(f"{where}: its convolution paths {theirs} differ from ours {keys}")
    return [theirs.index(key) for key in keys]


def symmetric_couplings(stored: torch.Tensor, per_channel: o3.Irreps, nu: int, ir_out: o3.Irrep) -> torch.Tensor:
    """[k, M a_1..a_ν] (float64): the part of mace-torch's ``U_matrix_ν`` (its k chains) symmetric
    in the ν factors, the only part that acts."""
    u = stored.to(torch.float64)
    u = u.reshape(ir_out.dim, *([per_channel.dim] * nu), u.shape[-1]).movedim(-1, 0)  # [k, M, a..]
    axes = list(range(2, 2 + nu))
    symmetric = sum(u.permute(0, 1, *perm) for perm in itertools.permutations(axes)) / math.factorial(nu)
    return symmetric.reshape(symmetric.shape[0], -1)


def coupling_coordinates(stored: torch.Tensor, per_channel: o3.Irreps, nu: int, ir_out: o3.Irrep,
                         where: str) -> torch.Tensor:
    """[k, p] (float64): `symmetric_couplings` written on our orthonormal basis (`product_basis`).

    The remainder of the projection must vanish (else the couplings leave the symmetric
    equivariant space and the file is refused).
    """
    symmetric = symmetric_couplings(stored, per_channel, nu, ir_out)
    scale = float(symmetric.abs().max()) if symmetric.numel() else 0.0
    basis = product_basis(per_channel, nu, ir_out).reshape(-1, symmetric.shape[1])  # [p, M a..], orthonormal
    coordinates = symmetric @ basis.T  # [k, p]
    residual = float((symmetric - coordinates @ basis).abs().max()) if scale > 0 else 0.0
    if residual > PROJECTION_TOLERANCE.get(stored.dtype, 1e-3) * max(scale, 1.0):
        raise ConversionError(
            f"{where}: its ν={nu} coupling to {ir_out} lies outside the symmetric equivariant space "
            f"(projection residual {residual:.2e})"
        )
    return coordinates


def contraction_weights(contraction: Record, ours, i_out: int, where: str) -> dict[str, torch.Tensor]:
    """Our symmetric-contraction weights of output irrep ``i_out`` from one mace-torch ``Contraction``.

    mace-torch contracts ν copies of A against U^ν[M, a_1..a_ν, k] with weights w[z, k, c]; only
    the part of U symmetric in the a's acts. On our orthonormal basis (`coupling_coordinates`):
    ``w_ours[z, c, p] = Σ_k w[z, k, c] <U_ours[p], Sym U[..., k]>``.
    """
    correlation = int(contraction.attr("correlation"))
    _, per_channel = channel_irreps(ours.irreps_in)
    ir_out = ours.per_channel_out[i_out].ir
    parameters = contraction.child("weights").parameters
    weights_by_nu = {correlation: contraction.tensor("weights_max")}
    for j in range(correlation - 1):
        weights_by_nu[correlation - 1 - j] = parameters[str(j)]
    names = {nu: name for nu, name in ours.paths[i_out]}
    out: dict[str, torch.Tensor] = {}
    for nu in range(1, correlation + 1):
        w = weights_by_nu[nu].to(torch.float64)  # [z, k, c]
        if nu not in names:
            symmetric = symmetric_couplings(contraction.tensor(f"U_matrix_{nu}"), per_channel, nu, ir_out)
            if symmetric.numel() and float(symmetric.abs().max()) > 0 and float(w.abs().max()) > 0:
                raise ConversionError(f"{where}: a ν={nu} path to {ir_out} that our contraction does not have")
            continue
        coordinates = coupling_coordinates(contraction.tensor(f"U_matrix_{nu}"), per_channel, nu, ir_out, where)
        out[names[nu]] = torch.einsum("zkc,kp->zcp", w, coordinates)
    return out


def check_supported(model: Record) -> None:
    """Refuse what our MACE does not express, naming it."""
    if model.kind not in MODEL_KINDS:
        raise ConversionError(f"a {model.kind}, not one of mace-torch's {sorted(MODEL_KINDS)} "
                              "(dipole, polarisability, PolarMACE and field models are not energy models we read)")
    extra = set(model.children) - KNOWN_CHILDREN
    named = [f"{part} ({UNSUPPORTED_PARTS[part]})" for part in sorted(extra) if part in UNSUPPORTED_PARTS]
    if named:
        raise ConversionError(f"not supported: {', '.join(named)}")
    if extra:
        raise ConversionError(f"parts our MACE does not have: {sorted(extra)}")
    for flag, plain in REFUSED_FLAGS.items():
        value = model.attr(flag, plain)
        if value != plain:
            raise ConversionError(f"{flag}={value!r} is not supported (only {plain!r})")
    radial = model.child("radial_embedding")
    if not radial.child("bessel_fn").kind.endswith("radial.BesselBasis"):
        raise ConversionError(f"radial basis {radial.child('bessel_fn').kind}; only the Bessel basis is supported")
    if "distance_transform" in radial.children and radial.child("distance_transform").kind != AGNESI:
        raise ConversionError(f"distance_transform {radial.child('distance_transform').kind} is not supported "
                              "(only the Agnesi transform)")
    if "pair_repulsion_fn" in model.children:
        zbl = model.child("pair_repulsion_fn")
        if zbl.kind != ZBL:
            raise ConversionError(f"pair repulsion {zbl.kind} is not supported (only ZBLBasis)")
        if not torch.allclose(zbl.tensor("c").to(torch.float64), torch.tensor(ZBL_COEFFICIENTS, dtype=torch.float64)):
            raise ConversionError(f"pair_repulsion_fn: ZBL coefficients {zbl.tensor('c').tolist()} are not the universal ones")
    sh = model.child("spherical_harmonics")
    if not sh.attr("normalize", True) or sh.attr("normalization", "component") != "component":
        raise ConversionError("spherical harmonics not normalised by component")
    interactions = model.child("interactions").children
    if len(interactions) < 2:
        raise ConversionError("a single interaction (its readout is linear; ours is an MLP): at least 2 needed")
    for t, block in interactions.items():
        allowed = (RESIDUAL, PLAIN, DENSITY_RESIDUAL, DENSITY, NONLINEAR) if t == "0" else (*RESIDUAL_KINDS, NONLINEAR)
        if block.kind not in allowed:
            raise ConversionError(f"interactions.{t} is a {block.kind.rsplit('.', 1)[-1]}; supported: "
                                  f"{[a.rsplit('.', 1)[-1] for a in allowed]}")
        if block.attr("cueq_config", None) is not None or block.attr("oeq_config", None) is not None:
            raise ConversionError(f"interactions.{t} was saved with cuequivariance/openequivariance layouts; "
                                  "convert the model back to e3nn in mace-torch first (mace_cueq_to_e3nn)")
    readouts = model.child("readouts").children
    for t, readout in readouts.items():
        expected = "NonLinearReadoutBlock" if int(t) == len(readouts) - 1 else "LinearReadoutBlock"
        if not readout.kind.endswith(f"blocks.{expected}"):
            raise ConversionError(f"readouts.{t} is a {readout.kind.rsplit('.', 1)[-1]}, expected {expected}")


def head_names(model: Record) -> list[str]:
    return list(model.attr("heads", None) or ["Default"])


def head_index(model: Record, head: str | None) -> tuple[int | None, int]:
    """(index of the chosen head, or None for ``head="all"``; number of heads)."""
    heads = head_names(model)
    if head == "all":
        return (None if len(heads) > 1 else 0), len(heads)
    if head is None:
        if len(heads) > 1:
            raise ConversionError(f"the file has heads {heads}: choose one with head=<name>, or head=all to keep them all")
        return 0, 1
    if head not in heads:
        raise ConversionError(f"no head {head!r}; the file has {heads}")
    return heads.index(head), len(heads)


def model_kwargs(model: Record, num_heads: int) -> dict[str, Any]:
    """Our MACE's constructor arguments read off the mace-torch modules."""
    interactions = model.child("interactions").children
    products = model.child("products").children
    radial = model.child("radial_embedding")
    averages = {float(block.attr("avg_num_neighbors")) for block in interactions.values()}
    radial_mlps = {tuple(block.attr("radial_MLP")) for block in interactions.values()}
    if len(averages) != 1 or len(radial_mlps) != 1:
        raise ConversionError("interactions with different avg_num_neighbors or radial MLPs")
    hidden = irreps(interactions["1"].attr("node_feats_irreps"))
    sh = irreps(model.child("spherical_harmonics").attr("irreps_out"))
    correlations = [int(p.child("symmetric_contractions").child("contractions").child("0").attr("correlation"))
                    for p in products.values()]
    mlp_irreps = irreps(model.child("readouts").children[str(len(interactions) - 1)].child("linear_1").attr("irreps_out"))
    transform = "agnesi" if "distance_transform" in radial.children else None
    return {
        **({"distance_transform": transform, "atomic_numbers": model.tensor("atomic_numbers").tolist()}
           if transform else {}),
        "interaction": [INTERACTION_OF.get(block.kind, "standard") for block in interactions.values()],
        "edge_irreps": None if model.attr("edge_irreps", None) is None else str(irreps(model.attr("edge_irreps"))),
        "edge_irreps_first_scalars": bool(model.attr("use_edge_irreps_first", False)),
        "agnostic_product": bool(model.attr("use_agnostic_product", False)),
        "apply_cutoff": bool(model.attr("apply_cutoff", True)),
        "num_elements": int(model.tensor("atomic_numbers").numel()),
        "avg_num_neighbors": averages.pop(),
        "r_max": float(model.tensor("r_max")),
        "num_bessel": int(radial.child("bessel_fn").tensor("bessel_weights").numel()),
        "cutoff_power": int(radial.child("cutoff_fn").tensor("p")),
        "max_ell": int(sh.lmax),
        "hidden_irreps": str(hidden),
        "correlation": correlations,
        "num_interactions": len(interactions),
        "radial_mlp": list(radial_mlps.pop()),
        "radial_fan_in_forward": True,  # e3nn's parametrisation (`radial_weights`)
        "readout_mlp": mlp_irreps.dim // num_heads,
        "tp_backend": "auto",
        "residual_first": interactions["0"].kind in (*RESIDUAL_KINDS, NONLINEAR),
    }


def layer_norm_mlp_weights(mlp: Record, rows: torch.Tensor | None, where: str) -> dict[str, torch.Tensor]:
    """Our `RadialMLP(layer_norm=True)` state from mace-torch's ``RadialMLP`` (Linear, LayerNorm,
    SiLU, ..., Linear: the same modules in the same places); ``rows`` reorders the outputs."""
    layers = mlp.child("net").children
    out = {}
    last = str(len(layers) - 1)
    for name, layer in layers.items():
        kind = layer.kind.rsplit(".", 1)[-1]
        if kind == "LayerNorm" and abs(float(layer.attr("eps", 1e-5)) - 1e-5) > 1e-12:
            raise ConversionError(f"{where}: LayerNorm eps {layer.attr('eps')} (ours 1e-5)")
        if kind not in ("Linear", "LayerNorm", "SiLU"):
            raise ConversionError(f"{where}: a {kind} in the radial MLP (expected Linear, LayerNorm, SiLU)")
        if kind == "SiLU":
            continue
        weight, bias = layer.tensor("weight"), layer.tensor("bias")
        if name == last and rows is not None:
            weight, bias = weight.index_select(0, rows), bias.index_select(0, rows)
        out[f"net.{name}.weight"], out[f"net.{name}.bias"] = weight, bias
    return out


def gate_folded_linear(record: Record, ours: o3.Linear, gate: Record, ours_gate, where: str) -> torch.Tensor:
    """The weights of the linear after mace-torch's gate, with the ratio of its activation
    constants to ours folded into each input irrep's block (SiLU on the scalars, sigmoid gates)."""
    weight = _linear_weight(record, ours.weight.numel(), where).to(torch.float64).clone()
    scalar = float(gate.attr("_scalar_cst")) / float(ours_gate.act_scalars.acts[0].cst)
    gated = float(gate.attr("_gate_cst")) / float(ours_gate.act_gates.acts[0].cst) if len(ours_gate.act_gates.acts) else 1.0
    offset = 0
    for ins in ours.instructions:
        size = math.prod(ins.path_shape)
        weight[offset : offset + size] *= scalar if ours.irreps_in[ins.i_in].ir.l == 0 else gated
        offset += size
    return weight


def nonlinear_block_weights(block: Record, ours, order: list[int], mul: int, where: str) -> dict[str, torch.Tensor]:
    """Our `NonLinearInteractionBlock`'s weights (keys below it) from mace-torch's
    ``RealAgnosticResidualNonLinearInteractionBlock``."""
    rows = torch.tensor([p * mul + c for p in order for c in range(mul)])
    out = {f"radial.{k}": v for k, v in layer_norm_mlp_weights(block.child("conv_tp_weights"), rows, where).items()}
    density = layer_norm_mlp_weights(block.child("density_fn"), None, f"{where}.density_fn")
    if density["net.0.weight"].shape != ours.density.net[0].weight.shape:
        raise ConversionError(f"{where}.density_fn: a {tuple(density['net.0.weight'].shape)} first layer, "
                              f"ours {tuple(ours.density.net[0].weight.shape)}")
    out |= {f"density.{k}": v for k, v in density.items()}
    for name in ("source_embedding", "target_embedding", "linear_res", "linear_1"):
        out[f"{name}.weight"] = _linear_weight(block.child(name), getattr(ours, name).weight.numel(), f"{where}.{name}")
    out["linear_2.weight"] = gate_folded_linear(block.child("linear_2"), ours.linear_2, block.child("equivariant_nonlin"),
                                                ours.gate, f"{where}.linear_2")
    out["alpha"], out["beta"] = block.tensor("alpha"), block.tensor("beta")
    return out


def _linear_weight(record: Record, expected_numel: int, where: str) -> torch.Tensor:
    weight = record.tensor("weight")
    if weight.numel() != expected_numel:
        raise ConversionError(f"{where}: {weight.numel()} weights where ours has {expected_numel}")
    return weight


def convert_mace_torch(path: str | Path, head: str | None = None) -> Potential:
    """Our `Potential` holding the mace-torch model at ``path`` (in the file's dtype).

    ``head`` picks one head of a multi-head file (required there), or ``"all"`` keeps every head
    (`Potential.select_head` picks one at run time; the first is selected).
    """
    path = Path(path)
    try:
        model = read_pickled_module(path)
        check_supported(model)
        return _convert(model, head)
    except (PickledModuleError, ConversionError) as exc:
        message = str(exc)  # named once: the reader's own errors name the file already
        raise ConversionError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None


def _convert(model: Record, head: str | None) -> Potential:
    h, num_heads = head_index(model, head)
    kwargs = model_kwargs(model, num_heads)
    dtype = model.child("node_embedding").child("linear").tensor("weight").dtype
    # per head: E0s [n_heads, n_elements], scale and shift [n_heads] (one head: without that axis)
    all_e0s = model.child("atomic_energies_fn").tensor("atomic_energies").to(torch.float64).reshape(num_heads, -1)
    all_scale, all_shift = torch.ones(num_heads, dtype=torch.float64), torch.zeros(num_heads, dtype=torch.float64)
    if model.kind.endswith("ScaleShiftMACE"):
        block = model.child("scale_shift")
        all_scale, all_shift = (block.tensor(name).to(torch.float64).reshape(num_heads) for name in ("scale", "shift"))
    first = 0 if h is None else h
    e0s, scale, shift = all_e0s[first], float(all_scale[first]), float(all_shift[first])
    spec = {"target": "mlip.models.mace.MACE", "kwargs": kwargs}
    if h is None:  # every head kept: the readouts give one energy per head
        kwargs["num_heads"] = num_heads
        spec["heads"] = head_names(model)
    if "pair_repulsion_fn" in model.children:  # ScaleShiftMACE scales it with the learned energy
        p = int(model.child("pair_repulsion_fn").tensor("p"))
        spec["pair_repulsion"] = {"kind": "zbl", "p": p, "scaled": model.kind.endswith("ScaleShiftMACE")}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        ours = build_model(spec)
        potential = Potential(ours, model.tensor("atomic_numbers").tolist(), e0s.tolist(), scale, shift, model_spec=spec)
    finally:
        torch.set_default_dtype(previous)
    state = potential.state_dict()
    new: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        key = f"model.{key}"
        if key not in state:
            raise ConversionError(f"internal: our model has no {key}")
        if state[key].numel() != value.numel():
            raise ConversionError(f"{key}: {value.numel()} values for our {state[key].numel()}")
        new[key] = value.reshape(state[key].shape).to(dtype)

    embedding = model.child("node_embedding").child("linear")
    put("embedding.linear.weight", _linear_weight(embedding, ours.embedding.linear.weight.numel(), "node_embedding"))
    bessel = model.child("radial_embedding").child("bessel_fn")
    put("radial_embedding.basis.frequencies", bessel.tensor("bessel_weights"))
    put("radial_embedding.basis.prefactor", bessel.tensor("prefactor"))
    cutoff_r = float(model.child("radial_embedding").child("cutoff_fn").tensor("r_max"))
    if abs(cutoff_r - ours.r_max) > 1e-12 * ours.r_max:
        raise ConversionError(f"cutoff r_max {cutoff_r} differs from the model's {ours.r_max}")
    atomic_numbers = model.tensor("atomic_numbers").to(torch.long)
    if ours.radial_embedding.transform is not None:  # the file's constants and covalent radii, not ours
        agnesi = model.child("radial_embedding").child("distance_transform")
        for name in ("q", "p", "a"):
            put(f"radial_embedding.transform.{name}", agnesi.tensor(name))
        put("radial_embedding.transform.covalent_radius", agnesi.tensor("covalent_radii").index_select(0, atomic_numbers))
    if potential.pair_repulsion is not None:  # the Potential's, not the model's: no "model." prefix
        zbl = model.child("pair_repulsion_fn")
        new["pair_repulsion.covalent_radius"] = zbl.tensor("covalent_radii").index_select(0, atomic_numbers).to(dtype)
        new["pair_repulsion.a_exponent"] = zbl.tensor("a_exp").reshape(()).to(dtype)
        new["pair_repulsion.a_prefactor"] = zbl.tensor("a_prefactor").reshape(()).to(dtype)

    interactions = model.child("interactions").children
    products = model.child("products").children
    readouts = model.child("readouts").children
    for t, (block, ours_block) in enumerate(zip(interactions.values(), ours.interactions)):
        where = f"interactions.{t}"
        put(f"{where}.linear_up.weight", _linear_weight(block.child("linear_up"), ours_block.linear_up.weight.numel(), where))
        order = path_order(block.child("conv_tp"), ours_block.convolution.instructions, where)
        mul = ours_block.convolution.irreps_in[0].mul
        if block.kind == NONLINEAR:
            for key, value in nonlinear_block_weights(block, ours_block, order, mul, where).items():
                put(f"{where}.{key}", value)
        else:
            for k, weight in enumerate(radial_weights(block.child("conv_tp_weights"), order, mul, where)):
                put(f"{where}.radial.net.{2 * k}.weight", weight)
            put(f"{where}.linear.weight", _linear_weight(block.child("linear"), ours_block.linear.weight.numel(), where))
        if block.kind in DENSITY_KINDS:
            (density,) = radial_weights(block.child("density_fn"), [0], 1, f"{where}.density_fn")
            put(f"{where}.density.net.0.weight", density)
        skip = block.child("skip_tp").tensor("weight")
        if block.kind in (*RESIDUAL_KINDS, NONLINEAR):  # the residual, added in our product block
            put(f"products.{t}.skip.weight", skip)
        else:
            put(f"{where}.element_linear.weight", skip)

        product, ours_product = products[str(t)], ours.products[t]
        where = f"products.{t}"
        if bool(product.attr("use_sc", True)) != (ours_product.skip is not None) and block.kind in (*RESIDUAL_KINDS, NONLINEAR):
            raise ConversionError(f"{where}: use_sc={product.attr('use_sc')} with a residual interaction")
        contractions = product.child("symmetric_contractions").child("contractions").children
        if len(contractions) != len(ours_product.contraction.paths):
            raise ConversionError(f"{where}: {len(contractions)} output irreps, ours {len(ours_product.contraction.paths)}")
        for i_out, contraction in enumerate(contractions.values()):
            for name, weight in contraction_weights(contraction, ours_product.contraction, i_out, where).items():
                put(f"{where}.contraction.weights.{name}", weight)
        put(f"{where}.linear.weight", _linear_weight(product.child("linear"), ours_product.linear.weight.numel(), where))

        readout, where = readouts[str(t)], f"readouts.{t}"
        last = t == len(interactions) - 1
        if not last:
            weight = readout.child("linear").tensor("weight").reshape(-1, num_heads)
            put(f"{where}.linear.weight", weight if h is None else weight[:, h])
        else:
            hidden = kwargs["readout_mlp"]
            channels = ours.readouts[t].linear_in.irreps_in.dim
            w1 = readout.child("linear_1").tensor("weight").reshape(channels, num_heads, hidden)
            # with several heads each owns one block of the hidden units (mace-torch's mask_head)
            w2 = readout.child("linear_2").tensor("weight").reshape(num_heads, hidden, num_heads)
            if h is not None:
                w1, w2 = w1[:, h], w2[h, :, h]
            acts = readout.child("non_linearity").child("acts").children
            if len(acts) != 1:
                raise ConversionError(f"{where}: {len(acts)} activations, expected one (SiLU)")
            constant = activation_constant(next(iter(acts.values())), where)
            # e3nn's Linear normalises by 1/sqrt(fan_in): with one head's block the fan-in shrinks
            # (all heads kept: our readout masks the blocks with mace-torch's fan-in)
            fan_in_ratio = 1.0 if h is None else math.sqrt(hidden / (hidden * num_heads))
            put(f"{where}.linear_in.weight", w1)
            put(f"{where}.linear_out.weight", w2.to(torch.float64) * constant / NormalizedSiLU.SCALE * fan_in_ratio)
    bad = first_nonfinite(new)
    if bad is not None:
        raise ConversionError(f"{bad.removeprefix('model.')}: the file's weights hold NaN or inf")
    missing = {k for k in state if k.startswith("model.") and k.endswith("weight") and state[k].numel()} - set(new)
    if missing:
        raise ConversionError(f"internal: weights left unmapped: {sorted(missing)}")
    if h is None:
        new["head_e0s"], new["head_scale"], new["head_shift"] = (
            value.to(dtype) for value in (all_e0s, all_scale, all_shift))
    state.update(new)
    potential.load_state_dict(state, strict=True)
    return potential.eval()
