"""summary.json: `Summary` (final and best metrics, times, versions, how the run ended), read and written
here only; and `display`, how a field of a Summary or an EpochRow reads for people."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError
from cifarlab.run.formatting import count, duration, learning_rate, loss, per_second, percent, percent_1
from cifarlab.run.layout import BEST, SUMMARY
from cifarlab.run.metrics import EpochRow
from cifarlab.run.outcomes import DivergedAt, EarlyStopped


def _item(label: Optional[str] = None, short: Optional[str] = None, optional: bool = False,
          show: Callable[[Any], str] = str):
    """A summary field: `label` in the report, `short` as a `compare` column header, `optional` left out of
    summary.json when None (val_* without a validation split, how a run stopped when it did not), `show`
    its display."""
    return field(default=None, metadata={"label": label, "short": short, "optional": optional, "show": show})


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

