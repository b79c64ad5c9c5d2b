"""``mlip-preprocess``: pack the structures of any reader into a sharded HDF5 store.

    mlip-preprocess input=train.xyz output=data/stores/train cutoff=5.0
    mlip-preprocess input=MPtrj_2022.9_full.json output=data/stores/mptrj cutoff=6.0 shard_size=20000

Prints the manifest's counts and statistics. Run it again with the same arguments
after an interruption and it carries on from the last whole shard.
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from mlip.configs import config_dir, search_path
from mlip.data.store.writer import write_store
from mlip.data.structure import DataError

CONFIG_DIR = config_dir("preprocess")


def preprocess(cfg: DictConfig) -> dict:
    """Write the store described by ``cfg`` (see configs/preprocess.yaml); returns its manifest."""
    options = OmegaConf.to_container(cfg, resolve=True)
    inputs = options["input"] if isinstance(options["input"], list) else [options["input"]]
    return write_store(
        inputs,
        options["output"],
        cutoff=options["cutoff"],
        shard_size=options["shard_size"],
        format=options["format"],
        reader=options["reader"],
        on_error=options["on_error"],
        e0s=options["e0s"],
        energy_reference=options["energy_reference"],
    )


def run_command(cfg: DictConfig) -> None:
    """The command on a composed config: run, print, exit with its status (`mlip.cli.launch`)."""
    logging.getLogger("mlip").setLevel(logging.INFO)
    try:
        manifest = preprocess(cfg)
    except DataError as exc:
        raise SystemExit(f"mlip-preprocess: data error: {exc}") from None
    shown = {k: manifest[k] for k in ("n_structures", "n_atoms", "elements", "energy_reference", "statistics")}
    shown["skipped"] = manifest["skipped"]["count"]
    shown["shards"] = len(manifest["shards"])
    print(json.dumps(shown, indent=1))
    print(f"store: {cfg.output}")


_hydra_main = hydra.main(version_base="1.3", config_path=search_path("preprocess"), config_name="preprocess")(run_command)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
