"""``mlip-train``: train a potential from the Hydra configs in ``configs/``.

    mlip-train                                   # the embedded EMT default
    mlip-train data=extxyz data.train_files=my.xyz model.correlation=2 trainer.max_epochs=100
    mlip-train finetune=naive model.path=foundation.safetensors data=extxyz data.train_files=my.xyz

The run folder (Hydra's output dir) receives the resolved config, the metrics CSV,
checkpoints (best and last), ``test_metrics.json`` and the exported model file. The work is
`mlip.training.job`, imported once the command runs: ``--help`` and ``--cfg job`` answer
without loading torch or Lightning.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from mlip.configs import config_dir, search_path

CONFIG_DIR = config_dir("train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg`` (`mlip.training.job.train`); returns the test metrics."""
    from mlip.training.job import train as run_job

    return run_job(cfg)


@hydra.main(version_base="1.3", config_path=search_path("train"), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    from mlip.data.structure import DataError
    from mlip.export import ModelFileError
    from mlip.finetune.pretrained import PretrainedError
    from mlip.finetune.rebuild import RebuildError
    from mlip.training.module import NonFiniteLossError

    try:
        train(cfg)
    except DataError as exc:
        raise SystemExit(f"mlip-train: data error: {exc}") from None
    except NonFiniteLossError as exc:
        raise SystemExit(f"mlip-train: {exc}") from None
    except (PretrainedError, RebuildError, ModelFileError) as exc:  # the model file of a fine-tuning run
        raise SystemExit(f"mlip-train: {exc}") from None


def main() -> None:
    from mlip.cli.console import quiet_lightning

    quiet_lightning()
    _hydra_main()


if __name__ == "__main__":
    main()
