"""CSVLogger: metrics.csv of a run, continued on resume."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from cifarlab.atomic import append_line, atomic_write_text
from cifarlab.run.metrics import METRIC_COLUMNS, EpochRow, csv_cells, is_whole_row
from cifarlab.trainer.callbacks import Callback


class CSVLogger(Callback):
    """metrics.csv: a `step` row per logging window and an `epoch` row per epoch; continues on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, state):
        # Rows logged after the checkpoint we resume from will be logged again, and a kill may have left
        # half a line: keep only whole rows up to the checkpoint's step, rewritten atomically.
        kept = self._rows_up_to(state.progress.step) if self.path.exists() else []
        out = io.StringIO()
        writer = csv.DictWriter(out, METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path, out.getvalue())

    def _rows_up_to(self, step: int) -> list[dict]:
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [row for row in rows if is_whole_row(row) and int(row["step"]) <= step]

    def _append(self, row: EpochRow) -> None:
        # One write, then fsync: after a kill the file holds whole rows (the reader drops a torn last one).
        line = io.StringIO()
        csv.DictWriter(line, METRIC_COLUMNS, lineterminator="\n").writerow(csv_cells(row))
        append_line(self.path, line.getvalue())

    def on_window(self, state):
        self._append(state.process.window)

    def on_epoch_end(self, state):
        self._append(state.progress.history[-1])
