"""Sweeps: many runs of a recipe as one Optuna study; each trial an ordinary run directory.

    from cifarlab.sweep import define_sweep, run_sweep
    sweep = define_sweep("smoke", ["data.val_split=64"], space_file="space.yaml", trials=8)
    run_sweep(sweep)                     # report.md, report.html, best.yaml in sweep.sweep_dir

Modules: `space` (space files and grids), `definition` (the checked sweep), `storage` (SQLite or
PostgreSQL, heartbeats and retries), `claim` (which trial a worker takes; a stopped trial waits for its
worker), `pruning` (the callback), `trial` (a trial's runs), `study` (the
worker loop), `workers` (K processes), `report`. Nothing heavy is imported here.
"""


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


__all__ = ["define_sweep", "run_sweep"]
