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
    mfu: Optional[float] = _metric("model FLOPs utilisation")  # a fraction of the peak (trainer/throughput.py)
    compile_seconds: Optional[float] = _metric("compile seconds", csv=False, tracked=False)

    def as_dict(self) -> dict[str, Any]:
        """The row as the history in checkpoints and `state.process.window` hold it: measured metrics only."""
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
    # MFU: training FLOPs per second as a fraction of the device's peak (trainer/throughput.py says how).
    mfu: Optional[float] = _item("model FLOPs utilisation", "MFU", optional=True)
    train_flops_per_image: Optional[int] = _item(optional=True)
    peak_flops: Optional[float] = _item(optional=True)
    peak_flops_source: Optional[str] = _item(optional=True)
    lr_peak: Optional[float] = _item("peak learning rate", "Found max LR")
    lr_peak_source: Optional[str] = _item()
    precision: Optional[str] = _item()
    # How it was chosen: train.precision=..., or `auto`'s measurement (trainer/autotune.py), cached or forced.
    precision_source: Optional[str] = _item(optional=True)
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

class FieldProblem(ValueError):
    """A stored field that is not what it must be: the file's reader prefixes where it came from
    (`checkpoint x.pt is not usable: classes must be ..., got ...`)."""

    def __init__(self, field: str, expected: str, value: Any):
        text = repr(value)
        super().__init__(f"{field} must be {expected}, got {text if len(text) <= 60 else text[:57] + '...'}")


def need(ok: bool, field: str, expected: str, value: Any) -> None:
    """Raise a FieldProblem for `field` unless `ok`."""
    if not ok:
        raise FieldProblem(field, expected, value)


def whole(value: Any, low: int = 0, high: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PRECISION_NAMES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class ModelCard:
    """What a model needs to be used, kept with its weights in every format a model comes in (timm's
    PretrainedCfg is the model): the classes in output order, the input (channels, size), the
    normalisation, the precision it was trained in, its test-time augmentation, the architecture with its
    options (`norm`, `dropout` and `model.options`: with `num_classes` and `in_channels`, the keywords of
    `create_model`) and the submodule that produces the logits (`classifier`, as the factory declared it).

    `to_dict` / `from_dict` write and read it as one unit: a checkpoint keeps its data fields flat beside
    the run's config (`from_config`), and every sidecar (export JSON, a model folder's config.json,
    MLflow's metadata) is `to_dict()` plus that format's extras. `from_dict` checks every field, so a card
    from any file is checked alike."""
    classes: tuple[str, ...]
    in_channels: int
    image_size: Optional[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: Optional[str]
    tta: Optional[str]
    architecture: str
    options: dict[str, Any] = field(default_factory=dict)
    classifier: Optional[str] = None
    # split -> sha256 of the data it trained on (Dataset.fingerprint; None in older checkpoints): evaluating
    # on other data warns, resuming refuses (data/checks.check_same_data)
    data_fingerprint: Optional[dict[str, Optional[str]]] = None

    # What a checkpoint stores flat (as cifarlab 0.1 wrote them); the rest comes from the run's config.
    DATA_FIELDS = ("classes", "mean", "std", "image_size", "in_channels", "precision")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model_kwargs(self) -> dict[str, Any]:
        """The keywords that rebuild the network: `create_model(**card.model_kwargs())`."""
        return {"name": self.architecture, "num_classes": self.num_classes, "in_channels": self.in_channels,
                **self.options}

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready values (lists for tuples)."""
        return {"architecture": self.architecture, "options": dict(self.options), "classifier": self.classifier,
                "classes": list(self.classes), "in_channels": self.in_channels, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "precision": self.precision, "tta": self.tta,
                "data_fingerprint": self.data_fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelCard":
        """The card of `data` (other keys are the format's extras), each field checked: a FieldProblem names
        the first one that is wrong. `in_channels` defaults to one per mean value."""
        check_card_fields(data)
        mean = tuple(data["mean"])
        need(isinstance(data.get("architecture"), str), "architecture", "a model name", data.get("architecture"))
        need(isinstance(data.get("options", {}), dict), "options", "a mapping", data.get("options"))
        return cls(classes=tuple(data["classes"]), in_channels=len(mean), image_size=data.get("image_size"),
                   mean=mean, std=tuple(data["std"]), precision=data.get("precision"), tta=data.get("tta"),
                   architecture=data["architecture"], options=dict(data.get("options") or {}),
                   classifier=data.get("classifier"), data_fingerprint=data.get("data_fingerprint"))

    @classmethod
    def from_config(cls, cfg, data: Mapping[str, Any]) -> "ModelCard":
        """The card of a run with config `cfg` whose data facts (DATA_FIELDS, data_fingerprint) are `data`:
        the one way a card is made, when a run trains and when a checkpoint or model folder is read.
        A file without `precision` (older cifarlab) has the config's."""
        from cifarlab.models.registry import MODELS

        check_card_fields(data)
        model, mean = cfg.model, tuple(data["mean"])
        known = model.name in MODELS.names()  # a user's model not imported yet: its factory declared nothing
        return cls(classes=tuple(data["classes"]), in_channels=len(mean), image_size=data.get("image_size"),
                   mean=mean, std=tuple(data["std"]), precision=data.get("precision") or cfg.train.precision,
                   tta=cfg.train.tta, architecture=model.name,
                   options={"norm": model.norm, "dropout": model.dropout, **model.options},
                   classifier=MODELS.facts(model.name)["classifier"] if known else None,
                   data_fingerprint=data.get("data_fingerprint"))

    def payload_fields(self) -> dict[str, Any]:
        """The card's DATA_FIELDS as checkpoints store them (flat keys, as cifarlab 0.1 wrote them)."""
        values = self.to_dict()
        return {key: values[key] for key in self.DATA_FIELDS}


def check_card_fields(data: Mapping[str, Any]) -> None:
    """The checks every format's card passes (a checkpoint, a model folder's config.json): distinct class
    names, 1 to 4 finite mean/std values with std > 0, a whole image size, a known precision."""
    classes = data.get("classes")
    need(isinstance(classes, (list, tuple)) and len(classes) >= 1 and all(isinstance(c, str) for c in classes)
         and len(set(classes)) == len(classes), "classes", "a list of distinct class names (strings)", classes)
    mean, std = data.get("mean"), data.get("std")
    for key, values in (("mean", mean), ("std", std)):
        need(isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(finite(v) for v in values),
             key, "a list of 1 to 4 finite numbers (one per channel)", values)
    need(len(std) == len(mean), "std", f"{len(mean)} values like mean", std)
    need(min(std) > 0, "std", "positive", std)
    for key, low, high in (("in_channels", len(mean), len(mean)), ("image_size", 1, 4096)):
        value = data.get(key)
        need(value is None or whole(value, low, high), key, f"a whole number in {low}..{high}", value)
    need(data.get("precision") in (None, *PRECISION_NAMES), "precision", "bf16, fp16 or fp32", data.get("precision"))
    prints = data.get("data_fingerprint")
    need(prints is None or (isinstance(prints, dict) and set(prints) == {"train", "val", "test"} and all(
        value is None or (isinstance(value, str) and len(value) == 64) for value in prints.values())),
        "data_fingerprint", "null or {train, val, test: a sha256 hex digest or null}", prints)
