"""Loggers: a metrics CSV that survives a resume."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps the rows written before it.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts; this logger
    puts the old rows back and continues the file with the same columns.
    """

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        previous = open(path, newline="").read() if os.path.isfile(path) else None
        writer = super().experiment
        if previous:
            with open(writer.metrics_file_path, "w", newline="") as f:
                f.write(previous)
            writer.metrics_keys = sorted(next(csv.reader(previous.splitlines()), []))
        return writer
