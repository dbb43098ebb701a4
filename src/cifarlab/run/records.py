"""The run's records, one typed definition each: readers and writers of the run directory go through them.

- `EpochRow`: one metrics row (a logging window or an epoch). Its fields are the metric names: the
  metrics.csv columns, the history rows in checkpoints, the TensorBoard tags, the MLflow keys, the report's
  curves and `compare`'s columns all derive from it, so adding a metric is one edit here.
- `Summary`: summary.json (final and best metrics, times, versions, how the run ended).
- `ModelCard`: what travels with the weights (timm's PretrainedCfg is the model): classes, input shape,
  mean/std, precision, TTA, architecture and its options.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import BEST, METRICS, SUMMARY


def _metric(label: str, *, csv: bool = True, tracked: bool = True, whole: bool = False):
    """A metric field: `label` for people, `csv` a metrics.csv column, `tracked` sent to TensorBoard and
    MLflow, `whole` an integer."""
    return field(default=None, metadata={"label": label, "csv": csv, "tracked": tracked, "whole": whole})


@dataclass(frozen=True)
class EpochRow:
    """One metrics row: a logging window (`kind` "step": epoch, step, lr, train_loss, train_acc) or a
    finished epoch (`kind` "epoch": everything measured). Accuracies are fractions; a metric a run does
    not measure (val_* without a validation split) is None and absent from the row's dict."""
    epoch: Optional[int] = _metric("epoch", whole=True)
    step: Optional[int] = _metric("step", whole=True, tracked=False)
    lr: Optional[float] = _metric("learning rate")
    train_loss: Optional[float] = _metric("train loss")
    train_acc: Optional[float] = _metric("train accuracy")
    val_loss: Optional[float] = _metric("validation loss")
    val_acc: Optional[float] = _metric("validation accuracy")
    test_loss: Optional[float] = _metric("test loss")
    test_acc: Optional[float] = _metric("test accuracy")
    elapsed_seconds: Optional[float] = _metric("training seconds so far", tracked=False)
    images_per_second: Optional[float] = _metric("training images/s")
    mfu: Optional[float] = _metric("model FLOPs utilisation")  # a fraction of the peak (training/throughput.py)
    compile_seconds: Optional[float] = _metric("compile seconds", csv=False, tracked=False)

    def as_dict(self) -> dict[str, Any]:
        """The row as the history in checkpoints and `state.window` hold it: measured metrics only."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "EpochRow":
        return cls(**{name: row.get(name) for name in METRIC_NAMES})


METRIC_NAMES = tuple(f.name for f in fields(EpochRow))
# metrics.csv: a `step` row per logging window, an `epoch` row per epoch; empty cells where not measured.
METRIC_COLUMNS = ("kind",) + tuple(f.name for f in fields(EpochRow) if f.metadata["csv"])
TRACKED = tuple(f.name for f in fields(EpochRow) if f.metadata["tracked"])  # to TensorBoard and MLflow
_WHOLE = tuple(f.name for f in fields(EpochRow) if f.metadata["whole"])


def tracker_key(kind: str, name: str) -> str:
    """The one name a metric has in TensorBoard and MLflow: `epoch/test_acc`, `step/train_loss`."""
    return f"{kind}/{name}"


def tracked_values(kind: str, row: Mapping[str, Any]) -> dict[str, float]:
    """{tracker_key: value} of a history row or window (`kind` epoch or step), measured metrics only."""
    return {tracker_key(kind, name): float(row[name]) for name in TRACKED if row.get(name) is not None}


# ------------------------------------------------------------------------------ summary.json

def _item(label: Optional[str] = None, short: Optional[str] = None, optional: bool = False):
    """A summary field: `label` in the report, `short` as a `compare` column header, `optional` left out of
    summary.json when None (val_* without a validation split, how a run stopped when it did not)."""
    return field(default=None, metadata={"label": label, "short": short, "optional": optional})


@dataclass
class Summary:
    """summary.json: what the run was, how it went and how it ended. Written at the end of each process
    that trains the run (so an interrupted run has one too); best_* are the epoch best.pt holds."""
    recipe: Optional[str] = _item("recipe", "Recipe")
    model: Optional[str] = _item("model")
    dataset: Optional[str] = _item("dataset")
    num_params: Optional[int] = _item("parameters")
    epochs_completed: Optional[int] = _item("epochs completed")
    epochs: Optional[int] = _item("epochs planned")
    selected_by: Optional[str] = _item(f"{BEST} chosen by")
    # "validation split", or "test split (optimistic)": best_test_acc is then a selected, biased estimate.
    selected_on: Optional[str] = _item(f"{BEST} selected on", optional=True)
    best_test_acc: Optional[float] = _item(f"test accuracy of {BEST}", "Best test acc.")
    best_epoch: Optional[int] = _item("best epoch")
    final_test_acc: Optional[float] = _item("final test accuracy")
    final_test_loss: Optional[float] = _item("final test loss")
    final_train_acc: Optional[float] = _item("final train accuracy")
    best_train_acc: Optional[float] = _item("best train accuracy", "Best train acc.")
    wall_seconds: Optional[float] = _item("wall time (every process of the run)", "Wall time")
    train_seconds: Optional[float] = _item()
    compile_seconds: Optional[float] = _item()
    train_images_per_second: Optional[float] = _item("training images/s", "Images/s")
    # MFU: training FLOPs per second as a fraction of the device's peak (training/throughput.py says how).
    mfu: Optional[float] = _item("model FLOPs utilisation", "MFU", optional=True)
    train_flops_per_image: Optional[int] = _item(optional=True)
    peak_flops: Optional[float] = _item(optional=True)
    peak_flops_source: Optional[str] = _item(optional=True)
    lr_peak: Optional[float] = _item("peak learning rate", "Found max LR")
    lr_peak_source: Optional[str] = _item()
    precision: Optional[str] = _item()
    tta: Optional[str] = _item()
    device: Optional[str] = _item()
    versions: dict[str, str] = field(default_factory=dict)
    status: Optional[str] = _item("status", "Status")
    best_val_acc: Optional[float] = _item(f"validation accuracy of {BEST}", optional=True)
    best_val_loss: Optional[float] = _item(optional=True)
    final_val_acc: Optional[float] = _item(optional=True)
    val_images: Optional[int] = _item(optional=True)
    early_stop: Optional[dict[str, Any]] = _item("stopped early", optional=True)  # {epoch, best_epoch, reason}
    diverged_at: Optional[dict[str, Any]] = _item(optional=True)  # {step, lr}
    # Where to go on from, for a run that stopped before its end (None: no checkpoint was written).
    last_good_checkpoint: Optional[str] = _item(optional=True)
    signal: Optional[str] = _item(optional=True)
    signal_number: Optional[int] = _item(optional=True)

    def to_json(self) -> dict[str, Any]:
        stopped = self.status in ("diverged", "interrupted")
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.metadata.get("optional") or getattr(self, f.name) is not None
                or (f.name == "last_good_checkpoint" and stopped)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Summary":
        """From a summary.json of any cifarlab version: unknown keys are ignored, missing ones are None."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    @staticmethod
    def labels(kind: str = "label") -> tuple[tuple[str, str], ...]:
        """(field, label) of the fields with a `kind` ("label": the report, "short": compare) label."""
        return tuple((f.name, f.metadata[kind]) for f in fields(Summary) if f.metadata.get(kind))


def write_summary(run_dir: str | Path, summary: Summary) -> None:
    atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(summary.to_json(), indent=2) + "\n")


def read_summary(run_dir: str | Path, required: bool = True) -> Optional[Summary]:
    """summary.json of a run; a UserError naming the directory when it is missing or broken (or None
    when `required` is False and the file is missing)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        if not required:
            return None
        raise UserError(f"{str(run_dir)!r} has no {SUMMARY}: not a cifarlab run directory, "
                        "or the run never finished an epoch")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} is not a cifarlab summary (a JSON object expected)")
    return Summary.from_json(data)


# ------------------------------------------------------------------------------ metrics.csv

def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.csv rows as {kind, every METRIC_COLUMNS cell}: numbers parsed (epoch/step int, the rest
    float), empty cells None. A run without metrics.csv has no rows; a torn last row (a kill mid-write)
    is skipped."""
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
            parsed[key] = None if cell == "" else int(float(cell)) if key in _WHOLE else float(cell)
    except ValueError:
        return None
    return parsed


def is_whole_row(row: dict) -> bool:
    """A metrics.csv row as written in full (a kill can leave half a line): every column of the file's
    header has a cell (files from before a column existed simply lack it) and none is left over."""
    return row.get("kind") in ("step", "epoch") and None not in row and None not in row.values() \
        and (row.get("step") or "").isdigit()


def csv_cells(kind: str, row: Mapping[str, Any]) -> dict[str, str]:
    """One metrics.csv line's cells: floats in 6 significant digits, empty where not measured."""
    cells = {"kind": kind}
    for name in METRIC_COLUMNS[1:]:
        value = row.get(name)
        cells[name] = "" if value is None else f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) \
            else str(value)
    return cells


# ------------------------------------------------------------------------------ the model card

@dataclass(frozen=True)
class ModelCard:
    """What a model needs to be used, kept with its weights in every checkpoint (timm's PretrainedCfg is
    the model): the classes in output order, the input (channels, size), the normalisation, the
    precision it was trained in, its test-time augmentation, and the architecture with its options."""
    classes: tuple[str, ...]
    in_channels: int
    image_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: Optional[str]
    tta: Optional[str]
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    # split -> sha256 of the data it trained on (Dataset.fingerprint; None in older checkpoints): evaluating
    # on other data warns, resuming refuses (data/checks.check_same_data)
    data_fingerprint: Optional[dict[str, Optional[str]]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def payload_fields(self) -> dict[str, Any]:
        """The card as checkpoints store it (flat keys, as cifarlab 0.1 wrote them; the architecture and
        TTA are read from the checkpoint's config)."""
        return {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "image_size": self.image_size, "in_channels": self.in_channels, "precision": self.precision}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "ModelCard":
        """From a checkpoint that `check_payload` accepted."""
        config = payload["config"]
        mean = tuple(payload["mean"])
        return cls(classes=tuple(payload["classes"]), in_channels=payload.get("in_channels") or len(mean),
                   image_size=payload.get("image_size"), mean=mean, std=tuple(payload["std"]),
                   precision=payload.get("precision"), tta=config.get("train", {}).get("tta"),
                   architecture=config["model"]["name"], options=dict(config["model"].get("options") or {}),
                   data_fingerprint=payload.get("data_fingerprint"))
