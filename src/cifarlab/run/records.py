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
from typing import Any, Callable, Mapping, Optional, Sequence

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.layout import BEST, METRICS, SUMMARY


# How a value is shown to people (the report, `compare`, the closing line): one formatter per kind of value,
# named on each field below, so "an accuracy is a percentage with 2 decimals" is said once.
def percent(value: Any) -> str:
    return f"{100 * float(value):.2f}%"


def percent_1(value: Any) -> str:  # a fraction of a device's peak (MFU)
    return f"{100 * float(value):.1f}%"


def learning_rate(value: Any) -> str:
    return f"{float(value):.2E}"


def loss(value: Any) -> str:
    return f"{float(value):.4f}"


def duration(value: Any) -> str:
    minutes, secs = divmod(int(round(float(value))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def per_second(value: Any) -> str:
    return f"{float(value):,.0f}"


def count(value: Any) -> str:
    return f"{int(value):,}"


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


# ------------------------------------------------------------------------------ summary.json

def _item(label: Optional[str] = None, short: Optional[str] = None, optional: bool = False,
          show: Callable[[Any], str] = str):
    """A summary field: `label` in the report, `short` as a `compare` column header, `optional` left out of
    summary.json when None (val_* without a validation split, how a run stopped when it did not), `show`
    its display."""
    return field(default=None, metadata={"label": label, "short": short, "optional": optional, "show": show})


PRUNED_BY = "pruned by"  # how a pruned run's stop reason begins (sweep/pruning.py): for people, never parsed


@dataclass(frozen=True)
class EarlyStopped:
    """How a run that stopped before its planned epochs ended (summary.json's and the checkpoints'
    `early_stop`): at `epoch`, best.pt being `best_epoch`, and why. `pruned_by`: the sweep pruner that stopped
    it (None for early stopping or a user's callback); written only when set, so other files keep their keys."""
    epoch: int
    best_epoch: Optional[int]
    reason: str
    pruned_by: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        stored = {"epoch": self.epoch, "best_epoch": self.best_epoch, "reason": self.reason}
        return stored if self.pruned_by is None else {**stored, "pruned_by": self.pruned_by}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional["EarlyStopped"]:
        if not isinstance(data, Mapping) or not data:
            return None
        reason = data.get("reason") or f"no improvement since epoch {data.get('best_epoch')}"
        return cls(data.get("epoch"), data.get("best_epoch"), reason, data.get("pruned_by"))


@dataclass(frozen=True)
class DivergedAt:
    """The first non-finite training step of a diverged run, and its learning rate."""
    step: int
    lr: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "lr": self.lr}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional["DivergedAt"]:
        return cls(data.get("step"), data.get("lr")) if isinstance(data, Mapping) else None


@dataclass(frozen=True)
class SavedCheckpoint:
    """The newest good last.pt of this process: where, at which epoch and step, and the status it holds
    (None where a resume read it: the file is the one it went on from)."""
    path: str
    epoch: int
    step: int
    status: Optional[str] = None


@dataclass(frozen=True)
class Evaluation:
    """`cifarlab eval`'s result: a model file's test metrics, evaluated as its run did (its precision, its
    TTA; `tta` None: none). top-5 only with more than 5 classes; top-5, macro F1 and ECE only where the
    evaluation kept the predictions (`cifarlab.evaluate` does, `use.evaluate.evaluate_checkpoint` does not)."""
    epoch: int
    test_loss: float
    test_acc: float
    images: int
    tta: Optional[str]
    precision: str
    test_top5_acc: Optional[float] = None
    test_macro_f1: Optional[float] = None
    test_ece: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line `cifarlab eval` prints: the metrics it has (an absent one is left out, not null)."""
        return {key: value for key, value in asdict(self).items()
                if value is not None or key in ("tta",)}


@dataclass
class Summary:
    """summary.json: what the run was, how it went and how it ended. Written at the end of each process
    that trains the run (so an interrupted run has one too); best_* are the epoch best.pt holds."""
    recipe: Optional[str] = _item("recipe", "Recipe")
    model: Optional[str] = _item("model")
    dataset: Optional[str] = _item("dataset")
    num_params: Optional[int] = _item("parameters", show=count)
    epochs_completed: Optional[int] = _item("epochs completed")
    epochs: Optional[int] = _item("epochs planned")
    selected_by: Optional[str] = _item(f"{BEST} chosen by")
    # "validation split", or "test split (optimistic)": best_test_acc is then a selected, biased estimate.
    selected_on: Optional[str] = _item(f"{BEST} selected on", optional=True)
    best_test_acc: Optional[float] = _item(f"test accuracy of {BEST}", "Best test acc.", show=percent)
    best_epoch: Optional[int] = _item("best epoch")
    final_test_acc: Optional[float] = _item("final test accuracy", show=percent)
    final_test_loss: Optional[float] = _item("final test loss", show=loss)
    final_train_acc: Optional[float] = _item("final train accuracy", show=percent)
    best_train_acc: Optional[float] = _item("best train accuracy", "Best train acc.", show=percent)
    wall_seconds: Optional[float] = _item("wall time (every process of the run)", "Wall time", show=duration)
    train_seconds: Optional[float] = _item()
    compile_seconds: Optional[float] = _item()
    train_images_per_second: Optional[float] = _item("training images/s", "Images/s", show=per_second)
    # MFU: training FLOPs per second as a fraction of the device's peak (trainer/throughput.py says how).
    mfu: Optional[float] = _item("model FLOPs utilisation", "MFU", optional=True, show=percent_1)
    train_flops_per_image: Optional[int] = _item(optional=True)
    peak_flops: Optional[float] = _item(optional=True)
    peak_flops_source: Optional[str] = _item(optional=True)
    lr_peak: Optional[float] = _item("peak learning rate", "Found max LR", show=learning_rate)
    lr_peak_source: Optional[str] = _item()
    precision: Optional[str] = _item()
    # How it was chosen: train.precision=..., or `auto`'s measurement (trainer/autotune.py), cached or forced.
    precision_source: Optional[str] = _item(optional=True)
    tta: Optional[str] = _item()
    device: Optional[str] = _item()
    versions: dict[str, str] = field(default_factory=dict)
    status: Optional[str] = _item("status", "Status")
    best_val_acc: Optional[float] = _item(f"validation accuracy of {BEST}", optional=True, show=percent)
    best_val_loss: Optional[float] = _item(optional=True, show=loss)
    final_val_acc: Optional[float] = _item(optional=True, show=percent)
    val_images: Optional[int] = _item(optional=True)
    early_stop: Optional[EarlyStopped] = _item("stopped early", optional=True, show=lambda stop: str(stop.to_json()))
    diverged_at: Optional[DivergedAt] = _item(optional=True)
    # Where to go on from, for a run that stopped before its end (None: no checkpoint was written).
    last_good_checkpoint: Optional[str] = _item(optional=True)
    signal: Optional[str] = _item(optional=True)
    signal_number: Optional[int] = _item(optional=True)

    _NESTED = {"early_stop": EarlyStopped, "diverged_at": DivergedAt}  # not a field: no annotation

    def to_json(self) -> dict[str, Any]:
        stopped = self.status in ("diverged", "interrupted")
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if not f.metadata.get("optional") or getattr(self, f.name) is not None
                  or (f.name == "last_good_checkpoint" and stopped)}
        return {key: value.to_json() if key in self._NESTED and value is not None else value
                for key, value in values.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Summary":
        """From a summary.json of any cifarlab version: unknown keys are ignored, missing ones are None."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: cls._NESTED[key].from_json(value) if key in cls._NESTED else value
                      for key, value in data.items() if key in names})

    @staticmethod
    def labels(kind: str = "label") -> tuple[tuple[str, str], ...]:
        """(field, label) of the fields with a `kind` ("label": the report, "short": compare) label."""
        return tuple((f.name, f.metadata[kind]) for f in fields(Summary) if f.metadata.get(kind))


# How each field of EpochRow and Summary is shown (a name in both is shown alike).
_SHOW = {f.name: f.metadata["show"] for record in (EpochRow, Summary) for f in fields(record) if "show" in f.metadata}


def display(name: str, value: Any) -> str:
    """A record field's value as people read it (`display("test_acc", 0.918)` is 91.80%); "—" when not measured."""
    if value is None or value == "":
        return "—"
    return _SHOW.get(name, str)(value)


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
    need(isinstance(classes, (list, tuple)) and len(classes) >= 1 and all(isinstance(c, str) and c for c in classes)
         and len(set(classes)) == len(classes), "classes", "a list of distinct class names (non-empty strings)",
         classes)
    mean, std = data.get("mean"), data.get("std")
    for key, values in (("mean", mean), ("std", std)):
        need(isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(finite(v) for v in values),
             key, "a list of 1 to 4 finite numbers (one per channel)", values)
    channels = data.get("in_channels")
    need(channels is None or whole(channels, 1, 4), "in_channels", "a whole number in 1..4", channels)
    need(channels is None or len(mean) != len(std) or len(mean) == channels, "in_channels",
         f"{len(mean)}, as many as mean and std hold", channels)  # both lists agree: the count is what is off
    # Each list against the channels it normalises (mean's length only where the card has none): a mean
    # longer than the channels is the mean's fault, not the std's.
    for key, values in (("mean", mean), ("std", std)):
        count = len(mean) if channels is None else channels
        need(len(values) == count, key, f"{count} values, one per channel" if channels is not None else
             f"{count} values like mean", values)
    need(min(std) > 0, "std", "positive", std)
    image_size = data.get("image_size")
    need(image_size is None or whole(image_size, 1, 4096), "image_size", "a whole number in 1..4096", image_size)
    need(data.get("precision") in (None, *PRECISION_NAMES), "precision", "bf16, fp16 or fp32", data.get("precision"))
    prints = data.get("data_fingerprint")
    need(prints is None or (isinstance(prints, dict) and set(prints) == {"train", "val", "test"} and all(
        value is None or (isinstance(value, str) and len(value) == 64) for value in prints.values())),
        "data_fingerprint", "null or {train, val, test: a sha256 hex digest or null}", prints)
