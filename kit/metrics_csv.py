"""`metrics.csv` that survives kill -9 and resumes without duplicated or lost rows.

Lightning's CSVLogger keeps rows in memory until every 100th step or the end of fit, appends to the
file in place, and deletes an existing `metrics.csv` when a resumed run opens the same directory.
Here every `save` (the loop saves once per round, before the round's checkpoint) rewrites the whole
file atomically, and a resumed run first keeps the rows of the rounds its checkpoint holds (a row
written after the checkpoint it resumes from is dropped, as that round is run again).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from kit.atomic import fsync_replace

ROUND = "round"  # every row the loop logs carries its round (0: before training)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv, as strings (empty list when there is no file)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _AtomicWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        self.rows: list[dict] = []  # every row of the file, written whole at each save
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep an existing file until the first save: a resumed run takes its rows over (`resume`)."""

    def resume(self, rounds_done: int) -> None:
        rows = read_rows(Path(self.metrics_file_path))
        self.rows = [r for r in rows if r.get(ROUND) not in (None, "") and float(r[ROUND]) <= rounds_done]

    def save(self) -> None:
        if not self.metrics:
            return
        self.rows += self.metrics
        self.metrics = []
        self.metrics_keys = sorted(set().union(*self.rows))
        path = Path(self.metrics_file_path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self.rows)
        fsync_replace(tmp, path)


class RoundCSVLogger(CSVLogger):
    """CSVLogger writing `save_dir/metrics.csv` atomically; `resume(rounds_done)` keeps the done rounds."""

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__(save_dir, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> _AtomicWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicWriter(log_dir=self.log_dir)
        return self._experiment

    def resume(self, rounds_done: int) -> None:
        self.experiment.resume(rounds_done)
