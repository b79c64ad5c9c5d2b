"""``mlip-eval``: score trained models on labelled datasets, side by side.

    mlip-eval model=outputs/run/model.safetensors data=test.xyz
    mlip-eval "model=[runA/model.safetensors,runB/checkpoints/last.ckpt]" "data=[test_300K.xyz,test_600K.xyz,test_1200K.xyz,test_dih.xyz]"
    mlip-eval model=model.safetensors data=oc20_val.lmdb audit=equivariance predictions=true

Every (model, dataset) pair is one row: energy (total and per atom), force and stress
MAE/RMSE, force cosine and EFwT (`mlip.evaluation.scores`), and with
``audit=equivariance`` the rotation equivariance errors (`mlip.evaluation.equivariance`),
so approximate models show both. A list of 3BPA files (temperatures, dihedral scans)
gives the 3BPA table. Written atomically into ``output_dir``: ``report.json``,
``metrics.csv`` (the table), ``per_element.csv`` (force errors by element), PNG parity
plots and error histograms, and with ``predictions=true`` extxyz files with
``MLIP_energy``/``MLIP_forces``/``MLIP_stress`` beside the labels.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mlip.atomic import atomic_write_bytes
from mlip.cli.output_dir import prepare_output_dir
from mlip.configs import config_dir, search_path
from mlip.data.readers import iter_structures
from mlip.data.readers.atoms import DEFAULT_KEYS, missing_labels_message
from mlip.data.structure import DataError
from mlip.evaluation.equivariance import equivariance_audit
from mlip.evaluation.plots import error_histogram, parity_plot
from mlip.evaluation.predict import predict, predictions_extxyz
from mlip.evaluation.scores import by_config_type, score
from mlip.export import load_potential
from mlip.models.potential import UnknownElementError
from mlip.threads import set_threads

# its own folder: configs/ has model/ and data/ groups, and here model= and data= are paths
CONFIG_DIR = config_dir("eval")
AUDITS = ("none", "equivariance")
TABLE = [("energy_per_atom_mae", "E/atom MAE meV", 1e3), ("energy_per_atom_rmse", "E/atom RMSE meV", 1e3),
         ("energy_mae", "E MAE meV", 1e3), ("forces_mae", "F MAE meV/Å", 1e3), ("forces_rmse", "F RMSE meV/Å", 1e3),
         ("force_cosine", "F cos", 1.0), ("stress_rmse", "S RMSE meV/Å³", 1e3), ("efwt", "EFwT", 1.0)]


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def unique_names(paths: list[str]) -> list[str]:
    """Short names for files: the stem, or ``folder-stem`` where stems repeat (``run1-model``)."""
    stems = [Path(p).name.split(".")[0] for p in paths]
    return [f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def _csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue().encode()


def head_for(head, index: int, potential) -> str | None:
    """The head model ``index`` is scored with: from a list, its entry (null: the file's own);
    one name, for a multi-head model (which must have it: a typo is refused at once), while a
    single-head model is scored as it is."""
    if isinstance(head, list):
        return None if head[index] is None else str(head[index])
    if head is None or not potential.heads:
        return None
    return str(head)


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation described by ``cfg`` (configs/eval/eval.yaml); returns the report."""
    o = OmegaConf.to_container(cfg, resolve=True)
    set_threads(o.get("threads"))
    if o["audit"] not in AUDITS:
        raise ValueError(f"audit must be one of {AUDITS}, got {o['audit']!r}")
    models, files = _as_list(o["model"]), _as_list(o["data"])
    if isinstance(o.get("head"), list) and len(o["head"]) != len(models):
        raise ValueError(f"head= lists {len(o['head'])} heads for {len(models)} models: give one per model "
                         "(null: the file's own)")
    output_dir = Path(o["output_dir"] or Path(models[0]).with_name(Path(models[0]).name.split(".")[0] + "_eval"))
    prepare_output_dir(output_dir, bool(o.get("overwrite")), "mlip-eval")  # before hours of audit, not after
    datasets = {}
    for name, path in zip(unique_names(files), files):
        structures = list(itertools.islice(iter_structures(path, o["format"], **(o["reader"] or {})), o["max_structures"]))
        if not structures:
            raise DataError(f"{path}: holds no structures")
        datasets[name] = structures
    report = {"models": {}, "data": dict(zip(datasets, files)), "output_dir": str(output_dir)}
    outputs: dict[str, bytes] = {}
    rows, element_rows, type_rows = [], [], []
    for model_name, model_path in zip(unique_names(models), models):
        potential = load_potential(model_path, o["device"], o["dtype"]).requires_grad_(False)
        head = head_for(o.get("head"), len(report["models"]), potential)
        if head is not None:
            potential.select_head(head)
        forces = "conservative" if potential.conservative else "direct (non-conservative)"
        entry = report["models"][model_name] = {"path": model_path, "forces": forces, "datasets": {},
                                                "head": potential.head}
        for data_name, structures in datasets.items():
            try:
                predictions = predict(potential, structures, o["min_distance"])
            except UnknownElementError as exc:
                raise UnknownElementError(f"model {model_path}: {exc}") from None
            if not any(s.energy is not None or s.forces is not None or s.stress is not None for s in structures):
                # nothing to score against: an empty table would look like a result
                raise DataError(missing_labels_message(report["data"][data_name], {**DEFAULT_KEYS, **(o["reader"] or {})}))
            metrics = score(predictions)
            result = entry["datasets"][data_name] = {"errors": metrics}
            if o["audit"] == "equivariance":
                audit = equivariance_audit(potential, structures, o["num_rotations"], o["seed"],
                                           o.get("audit_structures"), bool(o.get("progress", False)))
                result["equivariance"] = {"rotations": o["num_rotations"], **audit.summary()}
            per_element = metrics.pop("per_element", {})
            result["per_element"] = per_element
            types = ["-" if st.info.get("config_type") is None else str(st.info["config_type"]) for st in structures]
            per_type = by_config_type(predictions, [st.info.get("config_type") for st in structures])
            if per_type:
                result["per_config_type"] = per_type
                type_rows += [{"model": model_name, "data": data_name, "config_type": name, **v}
                              for name, v in per_type.items()]
            flat = {f"equivariance_{k}": v for k, v in result.get("equivariance", {}).items()}
            rows.append({"model": model_name, "data": data_name, "forces": forces, **metrics, **flat})
            element_rows += [{"model": model_name, "data": data_name, "element": el, **v} for el, v in per_element.items()]
            stem = f"{model_name}_{data_name}"
            if o["plots"]:
                outputs[f"{stem}_parity.png"] = parity_plot(predictions, f"{model_name} on {data_name}",
                                                            types if per_type else None)  # coloured by config_type
                outputs[f"{stem}_errors.png"] = error_histogram(predictions, f"{model_name} on {data_name}")
            if o["predictions"]:
                outputs[f"{stem}_predictions.extxyz"] = predictions_extxyz(structures, predictions)
    if isinstance(o.get("head"), str) and not any(e.get("head") for e in report["models"].values()):
        raise ValueError(f"head={o['head']!r}: none of the models has several heads")
    outputs["report.json"] = json.dumps(report, indent=1).encode()
    outputs["metrics.csv"] = _csv(rows)
    outputs["per_element.csv"] = _csv(element_rows)
    if type_rows:
        outputs["per_config_type.csv"] = _csv(type_rows)
    for name, content in outputs.items():
        atomic_write_bytes(output_dir / name, content)
    report["rows"], report["files"], report["config_type_rows"] = rows, sorted(outputs), type_rows
    return report


def format_table(rows: list[dict]) -> str:
    """The comparison table: one line per (model, dataset), errors in meV units."""
    columns = [(key, title, factor) for key, title, factor in TABLE if any(key in row for row in rows)]
    width = max([len(r["model"]) + len(r["data"]) + 3 for r in rows] + [12])
    lines = [f"{'model / data':<{width}}" + "".join(f"{title:>16}" for _, title, _ in columns)]
    for row in rows:
        cells = "".join(f"{row[key] * factor:>16.4g}" if key in row else f"{'-':>16}" for key, _, factor in columns)
        lines.append(f"{row['model'] + ' / ' + row['data']:<{width}}" + cells)
    return "\n".join(lines)


def run_command(cfg: DictConfig) -> None:
    """The command on a composed config: run, print, exit with its status (`mlip.cli.launch`)."""
    try:
        report = evaluate(cfg)
    except (DataError, UnknownElementError, FileNotFoundError, FileExistsError, ValueError) as exc:
        raise SystemExit(f"mlip-eval: {exc}") from None
    print(format_table(report["rows"]))
    if report["config_type_rows"]:
        print("\nby config_type:")
        print(format_table([{**r, "data": f"{r['data']} [{r['config_type']}]"} for r in report["config_type_rows"]]))
    for name, entry in report["models"].items():
        if entry["forces"] != "conservative":
            print(f"{name}: forces {entry['forces']}: predicted directly, not the gradient of its energy")
    for row in report["rows"]:
        audit = {k: v for k, v in row.items() if k.startswith("equivariance_") and k.endswith("max_eV/A")}
        if audit:
            print(f"{row['model']} / {row['data']}: " + ", ".join(f"{k[13:]} {v:.2e}" for k, v in audit.items()))
    print(f"wrote {len(report['files'])} files to {report['output_dir']}")


_hydra_main = hydra.main(version_base="1.3", config_path=search_path("eval"), config_name="eval")(run_command)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
