"""Sweeps: many runs of a recipe as one Optuna study; each trial an ordinary run directory.

    from cifarlab.sweep import define_sweep, run_sweep
    sweep = define_sweep("smoke", ["data.val_split=64"], space_file="space.yaml", trials=8)
    run_sweep(sweep)                     # report.md, report.html, best.yaml in sweep.sweep_dir

Modules: `space` (space files and grids), `definition` (the checked sweep), `storage` (SQLite or
PostgreSQL, heartbeats and retries), `claim` (which trial a worker takes; a stopped trial waits for its
worker), `pruning` (the callback), `trial` (a trial's runs), `study` (the
worker loop), `workers` (K processes), `report`. Nothing heavy is imported here.
"""
from __future__ import annotations

from typing import Optional, Sequence


def define_sweep(*args, **kwargs):
    """A checked sweep definition (see `cifarlab.sweep.definition.define_sweep`)."""
    import importlib.util

    from cifarlab.errors import UserError

    if importlib.util.find_spec("optuna") is None:
        raise UserError("cifarlab sweep needs Optuna: pip install 'cifarlab[sweep]'")
    from cifarlab.sweep.definition import define_sweep as _define

    return _define(*args, **kwargs)


def run_sweep(sweep, workers: int = 1, report: bool = True, worker_id=None) -> int:
    from cifarlab.sweep.workers import run_sweep as _run

    return _run(sweep, workers=workers, report=report, worker_id=worker_id)


def split_arguments(arguments: Sequence[str]) -> tuple[list[str], Optional[str]]:
    """(overrides, space file) from the words after `cifarlab sweep RECIPE`: `key=value` words are overrides,
    the one word without `=` the space file."""
    from cifarlab.errors import UserError

    spaces = [arg for arg in arguments if "=" not in arg]
    if len(spaces) > 1:
        raise UserError(f"one space file expected, got {', '.join(spaces)} (overrides look like key=value)")
    return [arg for arg in arguments if "=" in arg], spaces[0] if spaces else None


def sweep_recipe(recipe: str, arguments: Sequence[str] = (), *, grid: Optional[list[str]] = None,
                 trials: Optional[int] = None, seeds: int = 1, name: Optional[str] = None,
                 folder: Optional[str] = None, storage: Optional[str] = None, pruner: str = "median",
                 heartbeat: int = 10, allow_test_selection: bool = False, workers: int = 1,
                 report: bool = True, worker_id: Optional[str] = None) -> int:
    """`cifarlab sweep`: define the sweep of `recipe` (`arguments`: `key=value` overrides and at most one
    space file, as `split_arguments` reads them; or `grid`) and work on it with `workers` processes
    until it has its trials; returns `run_sweep`'s exit code. The options are the command's flags."""
    overrides, space_file = split_arguments(arguments)
    sweep = define_sweep(recipe, overrides, space_file, grid, trials, seeds, name, folder, storage, pruner,
                         heartbeat, allow_test_selection)
    return run_sweep(sweep, workers=workers, report=report, worker_id=worker_id)


__all__ = ["define_sweep", "run_sweep", "split_arguments", "sweep_recipe"]
