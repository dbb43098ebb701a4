"""The run directory's format, in one place: its file names, the metrics.csv columns, summary.json.

```
runs/<recipe>/<YYYYmmdd-HHMMSS>/
  config.yaml  metrics.csv  summary.json  lr_find.json  tb/  checkpoints/{last,best}.pt  plots/  tables/
  model_summary.txt  report.md  report.html
```
Writers (the training callbacks, the summary at the end of a run) and readers (report, compare, resume)
both take names and columns from here, so the format changes in one file.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from cifarlab.atomic import atomic_write_text
from cifarlab.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LR_FIND = "lr_find.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
MODEL_SUMMARY = "model_summary.txt"
LOCK = ".lock"  # only where a directory cannot be flock'ed (see RunLock)

# metrics.csv: a `step` row per logging window, an `epoch` row per epoch; accuracies are fractions.
# The val columns stay empty without a validation split.
METRIC_COLUMNS = ("kind", "epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                  "test_acc", "elapsed_seconds", "images_per_second", "mfu")
_INT_COLUMNS = ("epoch", "step")


def check_run_name(name: str) -> str:
    """`name` (the config's `name`, the folder under output.dir) as one plain folder name, or a UserError:
    a separator, `..` or an absolute path would put the run outside output.dir."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"name={name!r} must be one folder name, without '/', '\\' or '..': a run is written to "
                        f"output.dir/<name>/<time> and must stay inside output.dir")
    return name


def new_run_dir(output_dir: str | Path, recipe: str) -> Path:
    """A fresh `<output_dir>/<recipe>/<time>` folder (a suffix when two runs start in the same second)."""
    root = Path(output_dir) / check_run_name(recipe)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        run_dir = root / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"cannot create run directory {run_dir}: {err.strerror}") from None
    raise UserError(f"too many runs started this second under {root}")


class RunLock:
    """An exclusive `flock` on the run directory itself, held while a process trains the run.

    The lock is on the directory's own file descriptor, so taking it writes nothing (a refused `resume`
    leaves the run byte for byte as it was, and no stale lock file is left behind), and the kernel drops it
    when the process exits, however it exits (SIGKILL included). On a file system that cannot lock a
    directory it falls back to locking `.lock` inside the run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock, or a UserError when another process holds it (nothing is written either way)."""
        try:
            self.fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                os.close(self.fd)  # no locks on directories here (e.g. NFS): lock a file in the run directory
                self.fd = None
                self.fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.release()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"run {self.run_dir} is being trained by another process right now; wait for it "
                                f"to finish, or stop it (Ctrl-C, kill), before resuming it") from None
            raise UserError(f"cannot lock run directory {self.run_dir}: {err.strerror or err}") from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":  # `with lock:` releases an acquired lock at the end; it takes none
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def checkpoint_path(run_dir: str | Path, name: str = "last.pt") -> Path:
    return Path(run_dir) / CHECKPOINTS / name


def report_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """best.pt, else last.pt, else None: the checkpoint a report or an evaluation of the run uses."""
    for name in ("best.pt", "last.pt"):
        path = checkpoint_path(run_dir, name)
        if path.is_file():
            return path
    return None


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
