"""Pruning: the run reports its per-epoch monitor to the Optuna trial and stops when the pruner says so.

Pruners by name: `median` (the default), `hyperband`, `none`. A pruned run stops through the callback
API after the epoch it was judged on (`state.request_stop(reason)`: its checkpoints say it finished,
so `resume` does not train it on, and its summary.json's early_stop says `pruned_by` which pruner).
"""
from __future__ import annotations

from typing import Iterable, Optional

import optuna

from cifarlab.errors import UserError
from cifarlab.run.metrics import EpochRow
from cifarlab.run.outcomes import PRUNED_BY
from cifarlab.trainer.callbacks import Callback

PRUNERS = ("median", "hyperband", "none")


def make_pruner(name, epochs: int) -> optuna.pruners.BasePruner:
    """A pruner by name (or, from Python, any Optuna pruner as it is). The median pruner waits for 5
    finished trials and judges from the second epoch on (the first epoch of a one-cycle schedule says
    little); hyperband budgets in epochs."""
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)  # steps are epochs, from 1
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def pruner_name(pruner) -> str:
    return pruner if isinstance(pruner, str) else type(pruner).__name__


class ReportToTrial(Callback):
    """Reports the monitor of `state.progress.history[-1]` to `trial` at every epoch end (step = the epoch) and stops
    the run when the trial should be pruned. On resume, the epochs done before are reported first, so a
    retried trial (a new Optuna trial continuing the same run) has the whole curve; `reported`: the epochs
    the trial holds already (a stopped trial taken again). `pruner`: the pruner named in the stop
    (`pruned_by` in summary.json's early_stop)."""

    def __init__(self, trial: optuna.Trial, monitor: str, prune: bool = True, pruner: str = "the sweep",
                 reported: Iterable[int] = ()):
        self.trial, self.monitor, self.prune, self.pruner = trial, monitor, prune, pruner
        self.pruned_at: Optional[int] = None
        self.reported: set[int] = set(reported)
        self.taken_over = False  # the trial was retried by another worker while this run trained

    def _report(self, row: EpochRow) -> None:
        if row.epoch not in self.reported and not self.taken_over:
            try:
                self.trial.report(float(row.value(self.monitor)), step=row.epoch)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Another worker found this trial's heartbeat late and retried it: the retry resumes this run
                # once it ends (`study.py`), and records it. The run goes on; nothing more is told to Optuna.
                self.taken_over = True
                return
            self.reported.add(row.epoch)

    def on_fit_start(self, state):
        for row in state.progress.history:
            self._report(row)

    def on_epoch_end(self, state):
        if state.stop is not None:  # stopping already (diverged, interrupted, early): nothing to judge
            return
        self._report(state.progress.history[-1])
        judged = self.prune and not self.taken_over and state.progress.epoch < state.cfg.train.epochs
        if judged and self.trial.should_prune():
            self.pruned_at = state.progress.epoch
            # ends after this epoch, saved as finished, with this reason
            state.request_stop(f"{PRUNED_BY} {self.pruner}", pruned_by=self.pruner)
