"""The sweep report in the sweep folder: `report.md`, a self-contained `report.html`, `trials.csv`, and
`best.yaml` (the best trial's configuration as a recipe `cifarlab train best.yaml` accepts as is).

Plots: Optuna's own (matplotlib backend) optimisation history, parameter importances and parallel
coordinates, and the per-epoch curves of the best trials overlaid (from their runs' metrics.csv).
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState

from cifarlab.analysis.report import Code, Image, Section, Table, Text, write_report
from cifarlab.atomic import atomic_write_text
from cifarlab.config_diff import diff_yaml, scalar
from cifarlab.run.formatting import duration
from cifarlab.run.layout import BEST, PLOTS  # the sweep folder keeps its plots as a run does
from cifarlab.run.metrics import EpochRow, read_metrics
from cifarlab.run.summary import display
from cifarlab.sweep.definition import Sweep
from cifarlab.sweep.pruning import pruner_name
from cifarlab.sweep.storage import redacted
from cifarlab.sweep.trial import TrialRecord

BEST_YAML = "best.yaml"
TRIALS_CSV = "trials.csv"
BEST_CURVES = 5  # trials whose curves are overlaid
SHOWN_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def write_sweep_report(sweep: Sweep, study: optuna.Study) -> Path:
    """Write the report (under a lock: several workers may finish together); returns report.md."""
    folder = sweep.sweep_dir
    with open(folder / ".report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        trials = [t for t in study.get_trials(deepcopy=False) if t.state in SHOWN_STATES]
        header, rows = trial_table(sweep, trials, short_values=False)  # the CSV keeps every digit of a parameter
        _write_csv(folder / TRIALS_CSV, header, rows)
        best = _best(study)
        sections = [_summary_section(sweep, study, trials, best),
                    Section("Trials", [Table(*trial_table(sweep, trials))])]
        if best is not None:
            atomic_write_text(folder / BEST_YAML, best_recipe(sweep, best))
            sections.append(Section("Best configuration", [Text(f"{BEST_YAML} (train it with `cifarlab train "
                                                                f"{folder / BEST_YAML}`):"),
                                                           Code((folder / BEST_YAML).read_text(), "yaml")]))
        sections.append(Section("Plots", _plots(sweep, study, trials)))
        md_path, _ = write_report(folder, sections, title=f"Sweep report: {sweep.name}")
    return md_path


def _best(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def short(value: Any) -> Any:
    """A parameter as a person reads it: a float to 4 significant digits (TPE proposes 0.012345678901234567)."""
    return f"{value:.4g}" if isinstance(value, float) else scalar(value)


def trial_table(sweep: Sweep, trials: list, short_values: bool = True) -> tuple[list[str], list[list[Any]]]:
    """Parameters, score, test accuracy of best.pt, training time, state and run folder per trial (the
    parameters to 4 significant digits unless `short_values` is false)."""
    show = short if short_values else scalar
    keys = list(sweep.space)
    header = ["trial", *keys, f"{sweep.monitor} (score)", f"test acc of {BEST}", "time", "state", "run"]
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        record = TrialRecord.of_trial(trial)
        score = trial.value if trial.state == TrialState.COMPLETE else record.score
        state = record.status if trial.state == TrialState.PRUNED else trial.state.name.lower()
        rows.append([trial.number, *(show(trial.params.get(key, "—")) for key in keys),
                     "—" if score is None else f"{score:.4f}", display("test_acc", record.test_acc),
                     duration(record.train_seconds) if record.train_seconds else "—",
                     state or "pruned", ", ".join(record.run_dirs)])
    return header, rows


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def best_recipe(sweep: Sweep, best: optuna.trial.FrozenTrial) -> str:
    """The best trial's config as a recipe: the values differing from the defaults, with a header."""
    cfg = sweep.trial_config(best.params)
    params = ", ".join(f"{key}={short(value)}" for key, value in best.params.items())
    head = (f"# Best trial ({best.number}) of sweep {sweep.name}: {sweep.monitor} {best.value:.4f}\n"
            f"# recipe {sweep.recipe} {' '.join(sweep.overrides)} with {params}\n")
    return head + diff_yaml(cfg)


def _summary_section(sweep: Sweep, study: optuna.Study, trials: list, best) -> Section:
    states = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    lines = [f"Recipe {sweep.recipe} {' '.join(sweep.overrides)}; {sweep.trials} trials asked, "
             + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
             + f". Each trial scored by {sweep.monitor} of its {BEST}"
             + (f", the mean over {sweep.seeds} seeds" if sweep.seeds > 1 else "")
             + f" ({sweep.direction}); pruner: {pruner_name(sweep.pruner)}. Storage: {redacted(sweep.storage_url)}, "
               f"study {sweep.name!r}."]
    if best is not None:
        test = TrialRecord.of_trial(best).test_acc
        lines.append(f"Best: trial {best.number}, {sweep.monitor} {best.value:.4f}"
                     + (f", test accuracy of {BEST} {100 * test:.2f}%" if test is not None else "")
                     + f", with {', '.join(f'{k}={short(v)}' for k, v in best.params.items())}.")
    return Section("Summary", [Text("\n\n".join(lines))])


def _plots(sweep: Sweep, study: optuna.Study, trials: list) -> list:
    """Each plot, or one line saying why it is missing (e.g. importances need two finished trials)."""
    from optuna.visualization import matplotlib as optuna_plots

    folder = sweep.sweep_dir
    blocks = []
    makers = [("history", "Optimisation history", optuna_plots.plot_optimization_history),
              ("importances", "Parameter importances", optuna_plots.plot_param_importances),
              ("parallel", "Parallel coordinates", optuna_plots.plot_parallel_coordinate)]
    for name, caption, maker in makers:
        path = folder / PLOTS / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = maker(study)
            _save_axes(ax, path)
            blocks.append(Image(f"{PLOTS}/{name}.png", caption))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            blocks.append(Text(f"{caption}: not drawn ({reason})."))
    curves = _curves_of_best(sweep, trials)
    if curves:
        path = folder / PLOTS / "best_curves.png"
        _plot_curves(curves, sweep.monitor, path)
        blocks.append(Image(f"{PLOTS}/best_curves.png", f"{sweep.monitor} per epoch, the best "
                                                        f"{len(curves)} trials overlaid"))
    return blocks


def _save_axes(ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    figure.savefig(tmp, dpi=110, bbox_inches="tight", facecolor="white", format="png")
    os.replace(tmp, path)
    plt.close(figure)  # Optuna's plots go through pyplot; close each so none is kept


def _curves_of_best(sweep: Sweep, trials: list) -> dict[str, list[EpochRow]]:
    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    finished.sort(key=lambda t: t.value, reverse=sweep.direction == "maximize")
    curves = {}
    for trial in finished[:BEST_CURVES]:
        run_dirs = TrialRecord.of_trial(trial).run_dirs
        rows = read_metrics(sweep.sweep_dir / run_dirs[0], kind="epoch") if run_dirs else []
        epochs = [row for row in rows if row.value(sweep.monitor) is not None]
        if epochs:  # a run on another machine (PostgreSQL sweep) has no folder here
            curves[f"trial {trial.number} ({trial.value:.4f})"] = epochs
    return curves


def _plot_curves(curves: dict[str, list[EpochRow]], monitor: str, path: Path) -> None:
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    scale = 100.0 if display(monitor, 1.0).endswith("%") else 1.0  # accuracies are shown in percent
    for label, rows in curves.items():
        ax.plot([row.epoch for row in rows], [scale * row.value(monitor) for row in rows], "-o", markersize=3,
                label=label)
    ax.set(xlabel="epoch", ylabel=f"{monitor}{' (%)' if scale != 1.0 else ''}", title=f"{monitor} of the best trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
