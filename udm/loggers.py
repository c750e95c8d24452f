"""The CSV loss log that survives a resume: Lightning's CSVLogger deletes an existing metrics.csv when a run is
resumed into its own folder; this one keeps the earlier rows and appends."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer that appends to an existing metrics.csv (under its header) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])  # Lightning writes the keys sorted, as it sorts new ones


class KeepingCSVLogger(CSVLogger):
    """CSVLogger (same arguments) whose metrics.csv keeps the rows of earlier runs into the same folder."""

    def drop_rows_from(self, step: int) -> int:
        """Remove this log's rows at `step` and later (a resume from a checkpoint at `step` logs them again)."""
        return drop_rows_from(Path(self.log_dir) / KeepingWriter.NAME_METRICS_FILE, step)

    @property
    def experiment(self) -> KeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_rows_from(path: str | Path, step: int) -> int:
    """Remove the rows of metrics.csv at `step` and later (a resume from a checkpoint at `step` logs them again);
    returns how many were removed. A missing file is left alone."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = [row for row in rows if not row.get("step") or int(float(row["step"])) < step]
    if len(keep) < len(rows):
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)
        tmp.replace(path)
    return len(rows) - len(keep)
