"""``mlip-convert``: another framework's model file as our model file.

    mlip-convert input=MACE.model output=mace.safetensors
    mlip-convert input=multihead.model head=pbe_mp
    mlip-convert framework=mlip input=finetuned.safetensors head=foundation   # one head of our own file

mace-torch ``.model`` files (``MACE`` and ``ScaleShiftMACE`` of mace-torch 0.3.x) are read
without mace-torch and without running their pickle (`mlip.convert.mace_torch`); what
our MACE cannot express exactly is refused with the reason. ``framework=mlip`` writes one
head of a multi-head mlip model file (a fine-tuned model's) as a single-head file.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlip.configs import config_dir, search_path
from mlip.convert.mace_torch import ConversionError, convert_mace_torch
from mlip.export import ModelFileError, load_potential, save_model
from mlip.finetune.rebuild import rebuild_potential
from mlip.models.potential import Potential

CONFIG_DIR = config_dir("convert")
FRAMEWORKS = ("mace-torch", "mlip")


def convert(cfg: DictConfig) -> Path:
    """Convert ``cfg.input`` and write our model file; returns its path."""
    if cfg.framework not in FRAMEWORKS:
        raise ConversionError(f"framework={cfg.framework!r}: one of {FRAMEWORKS}")
    source = Path(cfg.input)
    output = Path(cfg.output) if cfg.output else source.with_suffix(".safetensors")
    if cfg.framework == "mlip":
        potential = one_head(source, cfg.head)
        if output == source:
            raise ConversionError(f"{source}: give output= (the input would be overwritten)")
    else:
        potential = convert_mace_torch(source, head=cfg.head)
    extra = {"converted_from": {"framework": cfg.framework, "file": source.name, "head": cfg.head}}
    return save_model(potential, output, extra=extra)


def one_head(path: Path, head: str | None) -> Potential:
    """Head ``head`` of the multi-head mlip model file at ``path``, as a single-head potential."""
    potential = load_potential(path)
    if not potential.heads:
        raise ConversionError(f"{path}: has a single head already")
    if head is None or head not in potential.heads:
        raise ConversionError(f"{path}: head={head}; its heads are {potential.heads}")
    return rebuild_potential(potential, heads=[(head, potential.heads.index(head))])


def run_command(cfg: DictConfig) -> None:
    """The command on a composed config: run, print, exit with its status (`mlip.cli.launch`)."""
    try:
        output = convert(cfg)
    except (ConversionError, FileNotFoundError, ModelFileError) as exc:
        raise SystemExit(f"mlip-convert: {exc}") from None
    from mlip.export import read_metadata

    spec = read_metadata(output)["model_spec"]["kwargs"]
    shown = ", ".join(f"{k}={spec[k]}" for k in ("hidden_irreps", "max_ell", "correlation", "num_interactions", "r_max"))
    print(f"converted {cfg.input} ({cfg.framework}{f', head {cfg.head}' if cfg.head else ''}): MACE {shown}")
    print(f"model file: {output}")


_hydra_main = hydra.main(version_base="1.3", config_path=search_path("convert"), config_name="convert")(run_command)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
