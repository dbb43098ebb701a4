"""Several runs side by side: the "Accuracy Report" table and overlaid test curves."""
from __future__ import annotations

import csv
import glob
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import yaml

from cifarlab.analysis.report import markdown_table
from cifarlab.atomic import atomic_write, atomic_write_text, output_target
from cifarlab.config_diff import scalar, varying_keys
from cifarlab.errors import UserError
from cifarlab.run.layout import CONFIG, SUMMARY
from cifarlab.run.metrics import read_metrics
from cifarlab.run.summary import Summary, display, read_summary
from cifarlab.strict_yaml import YAMLRefused, load_yaml

# (row key, markdown header) in table order: the summary.json fields with a short label (run/summary.Summary),
# after the run and before the status, plus the lowest lr and the epochs done of planned.
_SUMMARY = dict(Summary.labels("short"))
COLUMNS = (
    ("run", "Run"), ("recipe", _SUMMARY["recipe"]), ("lr_peak", _SUMMARY["lr_peak"]), ("lr_min", "Min LR"),
    *((key, label) for key, label in _SUMMARY.items() if key not in ("recipe", "lr_peak", "status")),
    ("epochs", "Epochs"), ("status", _SUMMARY["status"]),
)


class ComparisonFiles(NamedTuple):
    markdown: Path
    csv: Path
    plot: Path


# ---------------------------------------------------------------- which runs

def expand_run_dirs(patterns: Sequence[str | Path]) -> list[Path]:
    """Run directories from what `compare` was given: a run directory (it has summary.json) as it is; a
    parent folder or a glob (`'runs/smoke/*'`, `'runs/**'`) as the run directories found in or under it,
    sorted by path. Duplicates (by real path) are dropped; something that yields no run directory is a UserError."""
    found: list[Path] = []
    seen: set[Path] = set()  # real paths of `found`
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = [Path(match) for match in sorted(glob.glob(pattern, recursive=True))
                       if Path(match).is_dir() and not _inside_a_run(Path(match))]
            runs = [run for match in matches for run in _runs_in(match)]
            if not runs:
                raise UserError(f"{pattern!r} matches no run directory (a folder with {SUMMARY})")
        else:
            path = Path(pattern)
            if not path.is_dir():
                raise UserError(f"{pattern!r} does not exist; give run directories, a folder of runs or a glob")
            runs = _runs_in(path)
            if not runs:
                raise UserError(f"{pattern!r} has no {SUMMARY} and no run directory below it: not a cifarlab "
                                f"run directory, or its runs never finished an epoch")
        for run in runs:  # the same run however spelled (`x`, `x/../x`, a symlink) counts once
            real = run.resolve()
            if real not in seen:
                seen.add(real)
                found.append(run)
    return found


def _runs_in(folder: Path) -> list[Path]:
    if (folder / SUMMARY).is_file():
        return [folder]
    return sorted(summary.parent for summary in folder.rglob(SUMMARY) if not _inside_a_run(summary.parent))


def _inside_a_run(folder: Path) -> bool:
    """Whether `folder` lies inside a run directory: a copy of a run's files, not a run (MLflow keeps its
    artifacts, summary.json among them, under the run's mlruns/; runs never nest)."""
    return any((parent / SUMMARY).is_file() for parent in folder.resolve().parents)


# ---------------------------------------------------------------- the table

def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """One row per run: found max lr, min lr, best test/train accuracy (fractions), epochs, time, speed,
    then the config keys whose values differ between the runs (dotted names, e.g. `optim.lr`). A run given
    twice (however spelled) is refused; every row's label is distinct (see `run_labels`)."""
    seen: dict[Path, str] = {}
    for run_dir in run_dirs:
        real = Path(run_dir).resolve()
        if real in seen:
            raise UserError(f"run {str(run_dir)!r} is given twice (also as {seen[real]!r}); give each run once")
        seen[real] = str(run_dir)
    rows = [_row(Path(run_dir), label) for run_dir, label in zip(run_dirs, run_labels(run_dirs))]
    configs = [_config(Path(run_dir)) for run_dir in run_dirs]
    for key in varying_keys(configs) if len(rows) > 1 else []:
        for row, config in zip(rows, configs):
            row[key] = scalar(_lookup(config, key))
    return rows


def _config(run_dir: Path) -> dict:
    path = run_dir / CONFIG
    try:
        config = load_yaml(path.read_text()) if path.is_file() else {}
    except (yaml.YAMLError, YAMLRefused, UnicodeDecodeError):  # an alias bomb, duplicate keys, not YAML
        raise UserError(f"{str(path)!r} is not valid YAML") from None
    return config if isinstance(config, dict) else {}


def _lookup(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(row key, header) of the table: COLUMNS, then the config keys that differ (their dotted names)."""
    config_keys = [key for key in rows[0] if "." in key] if rows else []
    return list(COLUMNS) + [(key, key) for key in config_keys]


def _row(run_dir: Path, label: str) -> dict:
    summary = read_summary(run_dir)
    metrics = read_metrics(run_dir)
    lrs = [row.lr for row in metrics if row.lr is not None]
    train_accs = [row.train_acc for row in metrics if row.kind == "epoch" and row.train_acc is not None]
    best_train = summary.best_train_acc
    if best_train is None and train_accs:
        best_train = max(train_accs)
    return {
        "run": label, "recipe": summary.recipe, "lr_peak": summary.lr_peak, "lr_min": min(lrs) if lrs else None,
        "best_test_acc": summary.best_test_acc, "best_train_acc": best_train,
        "epochs": f"{_or_unknown(summary.epochs_completed)}/{_or_unknown(summary.epochs)}",
        "wall_seconds": summary.wall_seconds, "train_images_per_second": summary.train_images_per_second,
        "mfu": summary.mfu,
        "status": summary.status,
    }


def _or_unknown(value) -> str:
    return "?" if value is None else str(value)


def run_label(run_dir: str | Path, depth: int = 2) -> str:
    """`runs/custom-resnet-onecycle/20240101-120000` -> `custom-resnet-onecycle/20240101-120000` (the last
    `depth` parts of the real path)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[-depth:]).lstrip("/") or "/"


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """`run_label` of each run, with more of its path for runs whose `<recipe>/<stamp>` collide
    (`a/runs/smoke/20240101-120000` and `b/runs/smoke/20240101-120000`), so no two curves share a name."""
    depths = [2] * len(run_dirs)
    while True:
        labels = [run_label(run_dir, depth) for run_dir, depth in zip(run_dirs, depths)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1]
        deeper = [i for i in clashing if depths[i] < len(Path(run_dirs[i]).resolve().parts)]
        if not deeper:
            return labels
        for i in deeper:
            depths[i] += 1


SHOWN_AS = {"lr_min": "lr"}  # the table's own columns, shown as the record field they are a value of


def format_cell(key: str, value: Any) -> str:
    """One table value as users write it: 91.80%, 1.87E-02, 1:02:03, 5,120 (each record field's display,
    run/summary.display); a config key as it reads in config.yaml."""
    if "." in key and value not in (None, ""):
        return str(value)
    return display(SHOWN_AS.get(key, key), value)



def to_markdown(rows: Sequence[dict]) -> str:
    table = columns(rows)
    return markdown_table([title for _, title in table], [[format_cell(key, row.get(key)) for key, _ in table]
                                                            for row in rows])


def to_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Raw values (accuracies as fractions, seconds) for further processing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [key for key, _ in columns(rows)]

    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=keys, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in keys})

    atomic_write(path, write, mode="w")
    return path


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path,
                     rows: Optional[list[dict]] = None) -> ComparisonFiles:
    """comparison.md, comparison.csv and comparison.png (overlaid test curves) in `out_dir`; `rows` is
    `compare_runs(run_dirs)` when the caller already has it."""
    from cifarlab.analysis.plots import plot_compare

    if not run_dirs:
        raise UserError("compare needs at least one run directory")
    rows = compare_runs(run_dirs) if rows is None else rows
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "comparison.md"
    atomic_write_text(markdown, "# Run comparison\n\n" + to_markdown(rows) + "\n![test curves](comparison.png)\n")
    csv_path = to_csv(rows, out_dir / "comparison.csv")
    curves = {row["run"]: read_metrics(run_dir) for row, run_dir in zip(rows, run_dirs)}
    plot = plot_compare(curves, out_dir / "comparison.png")
    return ComparisonFiles(markdown, csv_path, plot)


class Comparison(NamedTuple):
    """What `compare` found: the table as markdown, the rows it shows (raw values), the files it wrote."""
    table: str
    rows: list[dict]
    files: Optional[ComparisonFiles]


def compare(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Comparison:
    """`cifarlab compare`: the runs that `run_dirs` name (run directories, folders of runs, globs; see
    `expand_run_dirs`) side by side; with `out` (a folder, new or existing, checked first) also written
    there as comparison.md, .csv and .png (overlaid test curves)."""
    if out is not None:
        output_target(Path(out), "--out", folder=True)
    found = expand_run_dirs(run_dirs)
    rows = compare_runs(found)
    files = write_comparison(found, out, rows) if out is not None else None
    return Comparison(to_markdown(rows), rows, files)
