"""What the run directory's record files hold: metrics.csv rows and summary.json."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import METRICS, SUMMARY

# metrics.csv: a `step` row per logging window, an `epoch` row per epoch; accuracies are fractions.
# The val columns stay empty without a validation split.
METRIC_COLUMNS = ("kind", "epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                  "test_acc", "elapsed_seconds", "images_per_second")
_INT_COLUMNS = ("epoch", "step")


def write_summary(run_dir: str | Path, summary: dict) -> None:
    atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: str | Path, required: bool = True) -> dict:
    """summary.json of a run; a UserError naming the directory when it is missing or broken (or {} when
    `required` is False and the file is missing)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        if not required:
            return {}
        raise UserError(f"{str(run_dir)!r} has no {SUMMARY}: not a cifarlab run directory, "
                        "or the run never finished an epoch")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{str(path)!r} is not a cifarlab summary (a JSON object expected)")
    return summary


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers parsed (epoch/step int, the rest float) and empty cells as None.

    A run without metrics.csv has no rows; a torn last row (a kill mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if is_whole_row(row)]
    return [parsed for parsed in map(_parse_row, rows) if parsed is not None]


def _parse_row(row: dict[str, str]) -> Optional[dict[str, Any]]:
    parsed: dict[str, Any] = {"kind": row.get("kind", "")}
    try:
        for key in METRIC_COLUMNS[1:]:
            cell = (row.get(key) or "").strip()
            parsed[key] = None if cell == "" else int(float(cell)) if key in _INT_COLUMNS else float(cell)
    except ValueError:
        return None
    return parsed


def is_whole_row(row: dict) -> bool:
    """A metrics.csv row as written in full (a kill can leave half a line): every column of the file's
    header has a cell (files from before a column existed simply lack it) and none is left over."""
    return row.get("kind") in ("step", "epoch") and None not in row and None not in row.values() \
        and (row.get("step") or "").isdigit()
