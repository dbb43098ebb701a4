"""The run directory's layout: every file and folder name in it, in this one module.

```
runs/<recipe>/<YYYYmmdd-HHMMSS>/
  config.yaml  metrics.csv  summary.json  lr_find.json  mlflow.json  wandb.json  model_summary.txt  report.md
  report.html
  checkpoints/{last,best}.pt (and last.prev.pt, best.prev.pt: the files a save replaced; epoch-NNNN.pt with
    output.keep)
  tb/  plots/  tables/  mlruns/  wandb/ (W&B's own files)
```
Writers and readers take names from here, so the layout changes in one file (tests/test_structure.py
checks that no other module of src/ spells a name out). What goes into the files is in `run/metrics.py`
(metrics.csv), `run/summary.py` (summary.json) and `run/checkpoint.py` (the checkpoints).
"""
from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Optional

from cifarlab.errors import UserError

CONFIG = "config.yaml"  # the resolved config
METRICS = "metrics.csv"  # run/metrics.EpochRow rows
SUMMARY = "summary.json"  # run/summary.Summary
LR_FIND = "lr_find.json"  # the range test's losses and suggestion
MLFLOW_RUN = "mlflow.json"  # {store (relative) or tracking_uri, run_id}: a resumed run logs into the same MLflow run
MLFLOW_STORE = "mlruns"  # the local MLflow file store when no output.mlflow_uri is given
WANDB_RUN = "wandb.json"  # {run_id, project}: a resumed run logs into the same W&B run (W&B names its wandb/)
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # newest state, what resume continues
BEST = "best.pt"  # the epoch the monitor chose, what eval and report analyse
EPOCH_CHECKPOINT = "epoch-{epoch:04d}.pt"  # output.keep: each of the k best epochs by the monitor
TENSORBOARD = "tb"
PLOTS = "plots"
TABLES = "tables"
LR_FIND_PLOT = "lr_find.png"  # under plots/
MODEL_SUMMARY = "model_summary.txt"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LOCK = ".lock"  # only where a directory cannot be flock'ed (see run/lock.py)


def check_run_name(name: str) -> str:
    """`name` (the config's `name`, the folder under output.dir) as one plain folder name, or a UserError:
    a separator, `..` or an absolute path would put the run outside output.dir."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"name={name!r} must be one folder name, without '/', '\\' or '..': a run is written to "
                        f"output.dir/<name>/<time> and must stay inside output.dir")
    return name


def given_run_dir(run_dir: str | Path) -> Path:
    """`--run-dir` / `run_dir=` as a Path; an empty or blank string (an unset shell variable) is refused, not read
    as the current folder, which `Path("")` is."""
    if isinstance(run_dir, str) and not run_dir.strip():
        raise UserError(f"--run-dir must name a folder (new, empty, or a run to continue), got {run_dir!r}")
    return Path(run_dir)


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
            raise UserError(f"cannot create run directory {run_dir} (output.dir={output_dir}): {err.strerror}") \
                from None
    raise UserError(f"too many runs started this second under {root}")


def checkpoint_path(run_dir: str | Path, name: str = LAST) -> Path:
    return Path(run_dir) / CHECKPOINTS / name


def epoch_checkpoint(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / EPOCH_CHECKPOINT.format(epoch=epoch)


def epoch_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """epoch -> checkpoints/epoch-NNNN.pt of the epochs output.keep holds now."""
    found = {}
    for path in (Path(run_dir) / CHECKPOINTS).glob("epoch-*.pt"):
        match = re.fullmatch(r"epoch-(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def previous_path(path: str | Path) -> Path:
    """`last.pt` -> `last.prev.pt`: where the file a checkpoint save replaces is kept."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def check_run_files(run_dir: str | Path) -> None:
    """Every file a continued run rewrites is a regular file or absent: a folder (or a FIFO) in the place of
    last.pt or metrics.csv failed only when it was written, after an epoch had trained and other files had
    moved on. Checked before anything is written."""
    run_dir = Path(run_dir)
    checkpoints = [checkpoint_path(run_dir, name) for name in (LAST, BEST)]
    for path in (run_dir / CONFIG, run_dir / METRICS, run_dir / SUMMARY, *checkpoints,
                 *map(previous_path, checkpoints)):
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise UserError(f"run {run_dir}: {path.relative_to(run_dir)} is {kind}, where the run writes a file; "
                            f"move it away, then resume")


def report_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """best.pt, else last.pt, else None: the checkpoint a report or an evaluation of the run uses."""
    for name in (BEST, LAST):
        path = checkpoint_path(run_dir, name)
        if path.is_file():
            return path
    return None


def plot(name: str) -> str:
    """`plots/<name>`, relative to the run directory (as report.md links it)."""
    return f"{PLOTS}/{name}"


def run_dir_of_checkpoint(checkpoint: str | Path) -> Optional[Path]:
    """The run directory a checkpoint file lies in (`<run>/checkpoints/<file>.pt` next to config.yaml,
    symlinks and `..` resolved), or None when it lies elsewhere."""
    real = Path(checkpoint).resolve()
    run_dir = real.parent.parent
    return run_dir if real.parent.name == CHECKPOINTS and (run_dir / CONFIG).is_file() else None


def example_checkpoint(recipe: str = "<recipe>", stamp: str = "<time>") -> str:
    """`runs/<recipe>/<time>/checkpoints/best.pt`, for help texts and messages."""
    return f"runs/{recipe}/{stamp}/{CHECKPOINTS}/{BEST}"
