"""What the command-line tools print: Lightning's advertising and advice that our configs
already act on are left out, so the console holds the run's own lines."""

from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero info lines we drop: cloud-service tips, and the TF32 advice (the
# training config sets the float32 matmul precision deliberately: `float32_matmul_precision`)
_DROPPED_INFO = ("💡 Tip:", "TPU available:", "HPU available:", "that has Tensor Cores")
# warnings about settings our configs choose on purpose
_DROPPED_WARNINGS = (
    r".*does not have many workers.*",  # data configs set num_workers for their data's size
    r".*The number of training batches .* is smaller than the logging interval.*",  # small demo datasets
    r".*isinstance\(treespec, LeafSpec\).*",  # a deprecation inside Lightning itself
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in _DROPPED_INFO)


def quiet_lightning() -> None:
    """Drop Lightning's tips and the warnings on settings the configs choose deliberately."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())
    for pattern in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
