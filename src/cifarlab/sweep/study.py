"""The study and its workers: each worker asks Optuna for a trial, trains it (`sweep/trial.py`), tells the
score, until the study holds `trials` trials that count, finished or under way.

Counting: a trial counts when it is complete, pruned, running or waiting (a trial stopped by a signal,
or Optuna's retry of a killed one); failed trials (killed then retried) do not. Before it trains, a new
trial checks that fewer than `trials` counting trials are numbered below it: two workers asking at the
same moment could otherwise make one more trial than asked for.
Such a surplus trial ends at once as failed with `surplus` set.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Optional

import optuna
from optuna.trial import TrialState

from cifarlab.errors import UserError
from cifarlab.messages import say, warn
from cifarlab.run.lock import RunBusy
from cifarlab.sweep import trial as runs
from cifarlab.sweep.claim import claim, heartbeat, keep_for
from cifarlab.sweep.definition import Sweep, identity_differences
from cifarlab.sweep.pruning import ReportToTrial, make_pruner, pruner_name
from cifarlab.sweep.space import suggest
from cifarlab.sweep.storage import (
    RUN_ATTR,
    check_sqlite_file,
    check_url,
    open_storage,
    redacted,
    run_number,
)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DEFINITION_ATTR = "cifarlab_sweep"


class SurplusTrial(Exception):
    """Asked for after the study already held enough trials (a race between workers)."""


class TakenOver(Exception):
    """Another worker retried this worker's trial while it still trained it: the trial's heartbeat came later
    than twice --heartbeat (a starved process, a slow shared database). This worker's run goes on to its
    end; the retry, waiting for the run's lock, then resumes the finished run and records it."""


class SweepStopped(Exception):
    """The trial's run was stopped by a signal: the sweep stops; the same command continues it."""

    def __init__(self, message: str, signal_number: Optional[int] = None):
        super().__init__(message)
        self.exit_code = 128 + (signal_number or signal.SIGINT)  # as `train` exits: 130, 143, 138 (SIGUSR1)


def open_study(sweep: Sweep) -> optuna.Study:
    """Create the study, or join it when it exists and was started with the same definition."""
    check_url(sweep.storage_url)  # the storage first: a bad URL or a foreign database makes no folder
    check_sqlite_file(sweep.storage_url)
    make_sweep_folder(sweep.sweep_dir)
    storage = open_storage(sweep.storage_url, sweep.heartbeat_seconds)
    if sweep.grid is not None:
        sampler: optuna.samplers.BaseSampler = _Grid(sweep.grid, seed=0)
    else:
        # TPE starts from random points: Optuna's default 10 would leave a short sweep all random, so a
        # third of the trials (3 to 10). constant_liar: parallel workers do not all propose one point.
        startup = min(10, max(3, sweep.trials // 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(n_startup_trials=startup, constant_liar=True, seed=sweep.sampler_seed)
    study = optuna.create_study(storage=storage, study_name=sweep.name, direction=sweep.direction, sampler=sampler,
                                pruner=make_pruner(sweep.pruner, sweep.base_config.train.epochs),
                                load_if_exists=True)
    known = study.user_attrs.get(DEFINITION_ATTR)
    if known is None:
        study.set_user_attr(DEFINITION_ATTR, sweep.identity())
    elif differences := identity_differences(known, sweep):
        raise UserError(f"study {sweep.name!r} in {redacted(sweep.storage_url)} was started with another "
                        f"definition (its {', '.join(differences)} {'differs' if len(differences) == 1 else 'differ'} "
                        f"from this command's); run it as it was "
                        f"started, or give this sweep another --name (or --dir)")
    return study


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid, without its `study.stop()` once every point was tried: that stops `study.optimize`, which
    our workers do not run (they claim trials themselves, `sweep/claim.py`, and end when `trials` count)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sweep_folder(folder: Path) -> None:
    """The sweep folder (trials, report, the default study.db), or one line saying why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the sweep folder {folder}: {err.strerror or err}; give --dir a folder "
                        f"that can be written") from None
    if not os.access(folder, os.W_OK):  # a read-only disk says so here, not in SQLite's first write
        raise UserError(f"the sweep folder {folder} cannot be written; give --dir a folder that can be written")


@dataclass
class Counts:
    counted: int
    running: int
    waiting: int


def counts(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    return Counts(len(trials), sum(t.state == TrialState.RUNNING for t in trials),
                  sum(t.state == TrialState.WAITING for t in trials))


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def work(sweep: Sweep, study: optuna.Study, worker: Optional[str] = None) -> None:
    """Run trials until the study has `sweep.trials` that count and none is left running or waiting
    elsewhere (a worker that waits for the others takes over any of theirs that goes stale, and a stopped
    trial kept for another worker once it has waited long enough: `sweep/claim.py`). `worker` names this
    worker (`claim.worker_identity`): a trial it is stopped in waits for it."""
    storage = study._storage  # the RDBStorage open_study made (Optuna has no public accessor)
    objective = _Objective(sweep, study)
    while True:
        _fail_stale(study)
        trial = claim(study, storage, sweep.trials, worker, sweep.keep_seconds)
        if trial is not None:
            _run_trial(study, storage, trial, objective, worker)
            continue
        now = counts(study)
        if not now.running and not now.waiting:
            return
        time.sleep(sweep.heartbeat_seconds)


def _run_trial(study: optuna.Study, storage, trial: optuna.Trial, objective: "_Objective",
               worker: Optional[str]) -> None:
    """Train `trial` with its heartbeat beating and tell Optuna how it ended, as `study.optimize` would; a
    trial stopped by a signal goes back to WAITING, kept for this worker."""
    # skip_if_finished: another worker may have retried the trial (a late heartbeat) at any moment until here.
    try:
        with heartbeat(storage, trial):
            value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    except SurplusTrial:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except TakenOver as taken:
        warn(str(taken))
    except (SweepStopped, KeyboardInterrupt):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # retried meanwhile: it resumes the run
            keep_for(storage, trial, worker)
        raise
    except BaseException:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    else:
        study.tell(trial, value, skip_if_finished=True)


class _Objective:
    """One trial's runs, scored by the mean over seeds of best.pt's monitor."""

    def __init__(self, sweep: Sweep, study: optuna.Study):
        self.sweep, self.study = sweep, study

    def __call__(self, trial: optuna.Trial) -> float:
        resumed = RUN_ATTR in trial.user_attrs  # a stopped trial taken again: admitted when it started
        if not resumed:
            self._admit(trial)
        number = run_number(trial)
        try:
            trial.set_user_attr(RUN_ATTR, number)
        except optuna.exceptions.UpdateFinishedTrialError:  # retried between the claim and here: the retry trains
            raise TakenOver(self._taken_over(trial)) from None
        params = suggest(trial, self.sweep.space)
        cfg = self.sweep.trial_config(params)
        results = []
        for seed_index in range(self.sweep.seeds):
            seeded = cfg if seed_index == 0 else cfg.model_copy(update={"seed": cfg.seed + seed_index})
            results.append(self._run(trial, seeded, runs.run_dir_for(self.sweep.sweep_dir, number, seed_index,
                                                                     self.sweep.seeds), first=seed_index == 0))
            if results[-1].status != "completed":
                break
        try:
            self._record(trial, results)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TakenOver(self._taken_over(trial)) from None
        status = results[-1].status
        if status == "interrupted":
            raise SweepStopped(f"trial {trial.number} stopped by a signal", results[-1].signal_number)
        if status in ("pruned", "diverged"):
            raise optuna.TrialPruned(f"{status} ({results[-1].run_dir})")
        return mean(result.score for result in results)

    def _taken_over(self, trial: optuna.Trial) -> str:
        return (f"sweep {self.sweep.name}: trial {trial.number} was retried by another worker while this one had it "
                f"(its heartbeat came later than {2 * self.sweep.heartbeat_seconds} s; on a loaded machine, raise "
                f"--heartbeat); the retry records its run")

    def _admit(self, trial: optuna.Trial) -> None:
        below = [t for t in self.study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
        if len(below) >= self.sweep.trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study already holds {self.sweep.trials} trials")

    def _run(self, trial: optuna.Trial, cfg, run_dir, first: bool) -> runs.RunOutcome:
        # With several seeds the first seed's run is the one the pruner judges.
        pruner = pruner_name(self.sweep.pruner)
        by = f"the {pruner} pruner of sweep {self.sweep.name}, trial {trial.number}"
        held = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number]
        reporter = ReportToTrial(trial, self.sweep.monitor, first and pruner != "none", by,
                                 reported=held[0].intermediate_values if held else ())
        say(f"sweep {self.sweep.name}: trial {trial.number} -> {run_dir}")
        waiting = False
        while True:
            try:
                with runs.lines_prefixed(f"[trial {trial.number}] "):  # K workers' lines interleave in one log
                    summary = runs.train_or_resume(cfg, run_dir, [reporter] if first else [])
                break
            except RunBusy:  # a worker whose heartbeat came late still trains it: its end is ours to record
                if not waiting:
                    say(f"sweep {self.sweep.name}: trial {trial.number}'s run {run_dir} is being trained by another "
                        f"process (a worker whose heartbeat came late, or a resume of it); waiting for it to end")
                    waiting = True
                time.sleep(self.sweep.heartbeat_seconds)
        return runs.outcome(run_dir, summary, self.sweep.monitor)

    def _record(self, trial: optuna.Trial, results: list[runs.RunOutcome]) -> None:
        """What the report's table shows beside the score: the runs, their state, test accuracy and time."""
        runs.TrialRecord.of(results, self.sweep.sweep_dir).save(trial)
