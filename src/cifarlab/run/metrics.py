"""metrics.csv and its rows: `EpochRow`, one metrics row (a logging window or an epoch).

Its fields are the metric names: the metrics.csv columns, the history rows in checkpoints, the TensorBoard tags,
the MLflow keys, the report's curves and `compare`'s columns all derive from it, so adding a metric is one edit
here. Which way a metric is better, ranking rows by one, and reading and writing metrics.csv are here too.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from cifarlab.run.formatting import learning_rate, loss, per_second, percent, percent_1
from cifarlab.run.layout import METRICS

LOWER, HIGHER = "lower", "higher"  # which way a metric is better (a field's `better`)


def _metric(label: str, *, better: Optional[str] = None, show: Callable[[Any], str] = str, csv: bool = True,
            tracked: bool = True, whole: bool = False):
    """A metric field: `label` for people, `better` lower or higher (None: not a score), `show` its display,
    `csv` a metrics.csv column, `tracked` sent to TensorBoard and MLflow, `whole` an integer."""
    return field(default=None, metadata={"label": label, "better": better, "show": show, "csv": csv,
                                         "tracked": tracked, "whole": whole})


@dataclass(frozen=True)
class EpochRow:
    """One metrics row: a logging window (`kind` "step": epoch, step, lr, train_loss, train_acc) or a
    finished epoch (`kind` "epoch": everything measured). Accuracies are fractions; a metric a run does
    not measure (val_* without a validation split) is None and absent from the row's dict.

    Adding a metric is one field here plus the line that measures it (trainer/loop.py): metrics.csv,
    the checkpoints' history, TensorBoard, MLflow, W&B and the report's formatting all follow the fields."""
    epoch: Optional[int] = _metric("epoch", whole=True)
    step: Optional[int] = _metric("step", whole=True, tracked=False)
    lr: Optional[float] = _metric("learning rate", show=learning_rate)
    train_loss: Optional[float] = _metric("train loss", better=LOWER, show=loss)
    train_acc: Optional[float] = _metric("train accuracy", better=HIGHER, show=percent)
    val_loss: Optional[float] = _metric("validation loss", better=LOWER, show=loss)
    val_acc: Optional[float] = _metric("validation accuracy", better=HIGHER, show=percent)
    test_loss: Optional[float] = _metric("test loss", better=LOWER, show=loss)
    test_acc: Optional[float] = _metric("test accuracy", better=HIGHER, show=percent)
    elapsed_seconds: Optional[float] = _metric("training seconds so far", tracked=False)
    images_per_second: Optional[float] = _metric("training images/s", show=per_second)
    # MFU: a fraction of the device's peak FLOP/s (trainer/throughput.py)
    mfu: Optional[float] = _metric("model FLOPs utilisation", show=percent_1)
    compile_seconds: Optional[float] = _metric("compile seconds", csv=False, tracked=False)
    # "step" (a logging window) or "epoch": not a metric but metrics.csv's first column; not in a checkpoint
    kind: Optional[str] = field(default=None, compare=False, metadata={"metric": False})

    def as_dict(self) -> dict[str, Any]:
        """The row as the history in checkpoints holds it: measured metrics only."""
        return {name: getattr(self, name) for name in METRIC_NAMES if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], kind: Optional[str] = None) -> "EpochRow":
        return cls(**{name: row.get(name) for name in METRIC_NAMES}, kind=kind)

    def value(self, metric: str) -> Optional[float]:
        """The value of the metric named `metric` (a config's `checkpoint.monitor`, a sweep's score)."""
        if metric not in METRIC_NAMES:
            raise KeyError(f"{metric!r} is not a metric of EpochRow ({', '.join(METRIC_NAMES)})")
        return getattr(self, metric)


METRIC_FIELDS = tuple(f for f in fields(EpochRow) if f.metadata.get("metric", True))
METRIC_NAMES = tuple(f.name for f in METRIC_FIELDS)
# metrics.csv: a `step` row per logging window, an `epoch` row per epoch; empty cells where not measured.
METRIC_COLUMNS = ("kind",) + tuple(f.name for f in METRIC_FIELDS if f.metadata["csv"])
TRACKED = tuple(f.name for f in METRIC_FIELDS if f.metadata["tracked"])  # to TensorBoard and MLflow
SCORES = tuple(f.name for f in METRIC_FIELDS if f.metadata["better"])  # the metrics that can be better or worse
_WHOLE = tuple(f.name for f in METRIC_FIELDS if f.metadata["whole"])
_BETTER = {f.name: f.metadata["better"] for f in METRIC_FIELDS}


def lower_is_better(metric: str) -> bool:
    """Whether a smaller `metric` is better (the losses) or a larger one (the accuracies): the one place that
    says so, read by best.pt's choice, early stopping, output.keep, the sweep's direction and the plots."""
    better = _BETTER.get(metric)
    if better is None:
        raise KeyError(f"{metric!r} is not a score ({', '.join(SCORES)})")
    return better == LOWER


def _oriented(metric: str) -> Callable[[EpochRow], float]:
    sign = 1.0 if lower_is_better(metric) else -1.0
    return lambda row: sign * row.value(metric)


def best_row(rows: Sequence[EpochRow], metric: str) -> Optional[EpochRow]:
    """The row with the best `metric` (the first on ties: the epoch best.pt holds); rows without it skipped."""
    scored = [row for row in rows if row.value(metric) is not None]
    return min(scored, key=_oriented(metric)) if scored else None


def ranked(rows: Sequence[EpochRow], metric: str) -> list[EpochRow]:
    """`rows` from the best `metric` to the worst, the earlier row first on ties (as `best_row`)."""
    return sorted((row for row in rows if row.value(metric) is not None), key=_oriented(metric))


def improvement(metric: str, value: float, reference: float) -> float:
    """How much better `value` is than `reference` (negative: worse)."""
    return reference - value if lower_is_better(metric) else value - reference


def tracker_key(kind: str, name: str) -> str:
    """The one name a metric has in TensorBoard and MLflow: `epoch/test_acc`, `step/train_loss`."""
    return f"{kind}/{name}"


def tracked_values(row: EpochRow) -> dict[str, float]:
    """{tracker_key: value} of a history row or window (its `kind` epoch or step), measured metrics only."""
    return {tracker_key(row.kind, name): float(getattr(row, name)) for name in TRACKED
            if getattr(row, name) is not None}


# ------------------------------------------------------------------------------ metrics.csv

def read_metrics(run_dir: str | Path, kind: Optional[str] = None) -> list[EpochRow]:
    """metrics.csv rows (every one, or those of `kind` "step" or "epoch"), numbers parsed (epoch/step int,
    the rest float), empty cells None. A run without metrics.csv has no rows; a torn last row (a kill
    mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if is_whole_row(row)]
    return [parsed for parsed in map(_parse_row, rows) if parsed is not None and kind in (None, parsed.kind)]


def _parse_row(row: dict[str, str]) -> Optional[EpochRow]:
    parsed: dict[str, Any] = {}
    try:
        for key in METRIC_COLUMNS[1:]:
            cell = (row.get(key) or "").strip()
            parsed[key] = None if cell == "" else int(float(cell)) if key in _WHOLE else float(cell)
    except ValueError:
        return None
    return EpochRow.from_dict(parsed, kind=row.get("kind", ""))


def is_whole_row(row: dict) -> bool:
    """A metrics.csv row as written in full (a kill can leave half a line): every column of the file's
    header has a cell (files from before a column existed simply lack it) and none is left over."""
    return row.get("kind") in ("step", "epoch") and None not in row and None not in row.values() \
        and (row.get("step") or "").isdigit()


def csv_cells(row: EpochRow) -> dict[str, str]:
    """One metrics.csv line's cells: the row's kind, floats in 6 significant digits, empty where not measured."""
    cells = {"kind": row.kind}
    for name in METRIC_COLUMNS[1:]:
        value = getattr(row, name)
        cells[name] = "" if value is None else f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) \
            else str(value)
    return cells
