"""Loggers: a metrics CSV that survives a resume."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the rows written before it.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts; this logger
    puts the old rows back and continues the file with the same columns.
    """

    @property
    def experiment(self):
        if self._experiment is not None or rank_zero_only.rank > 0:  # other ranks get Lightning's dummy
            return super().experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        previous = path.read_text() if path.is_file() else None
        writer = super().experiment
        if previous:
            with open(writer.metrics_file_path, "w", newline="") as f:
                f.write(previous)
            writer.metrics_keys = sorted(next(csv.reader(previous.splitlines()), []))
        return writer
