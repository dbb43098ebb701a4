"""Which trial a sweep worker trains next, and a stopped trial kept for the worker that was training it.

A worker is named by what stays the same when a scheduler starts its job again (`worker_identity`):
`--worker-id`, else SLURM's array job and task (`slurm-<array job>_<task>`), else SLURM's job id. A trial
stopped by a signal (the scheduler's warning before it preempts or requeues the job, Ctrl-C) goes back to
WAITING as the same Optuna trial, kept for its worker: when the job runs again, that worker takes it first
and resumes its run directory, so the trial's log stays in one job's output and no trial is added. Another
worker takes a kept trial over only when it has nothing else to do and the trial has waited `keep_seconds`,
so a sweep does not wait for ever on a job that was cancelled instead of requeued. A trial stopped by a
worker without a name is free for any worker, as Optuna's retry of a killed worker's trial is.

We claim trials here instead of through `study.optimize`: Optuna's ask hands the oldest waiting trial to
whoever asks, with no way to keep one for a worker. The claim itself is Optuna's atomic step (WAITING to
RUNNING in one transaction, `set_trial_state_values`), so two workers never both take one trial.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional

import optuna
from optuna.trial import TrialState

from cifarlab.errors import UserError

KEPT_FOR = "kept_for"  # user attribute of a stopped trial: the worker it waits for (None: any worker)
STOPPED_AT = "stopped_at"  # user attribute: when it was stopped (Unix time)
WORKER = "worker"  # user attribute: the worker that claimed it last
KEEP_SECONDS = 900.0  # SLURM holds a requeued job ~2 min, then it waits its turn in the queue


def worker_identity(explicit: Optional[str], environ: Mapping[str, str]) -> Optional[str]:
    """This worker's name: `explicit`, else the SLURM array task or job it runs in, else None (no name)."""
    if explicit is not None:
        if not explicit.strip() or not explicit.isprintable():
            raise UserError(f"--worker-id must be a non-empty printable name, got {explicit!r}")
        return explicit
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"slurm-{array_job}_{task}"
    job = environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


def claim(study: optuna.Study, storage: optuna.storages.RDBStorage, trials: int, worker: Optional[str],
          keep_seconds: float = KEEP_SECONDS) -> Optional[optuna.Trial]:
    """The trial this worker trains next, now RUNNING; None when there is nothing for it to take. In this
    order: its own stopped trial, a free waiting one (a retry), a new trial while fewer than `trials`
    count, another worker's stopped trial that has waited `keep_seconds`."""
    study_id = storage.get_study_id_from_name(study.study_name)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    mine = [t for t in waiting if worker is not None and t.user_attrs.get(KEPT_FOR) == worker]
    free = [t for t in waiting if t.user_attrs.get(KEPT_FOR) is None]
    for candidate in mine + free:
        if _take(storage, study_id, candidate.number):
            return _claimed(study, storage, study_id, candidate.number, worker)
    counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                       TrialState.WAITING))
    if len(counted) < trials:
        trial_id = storage.create_new_trial(study_id)
        return _claimed(study, storage, study_id, storage.get_trial_number_from_id(trial_id), worker)
    overdue = [t for t in waiting if t.user_attrs.get(KEPT_FOR) not in (None, worker)
               and time.time() - float(t.user_attrs.get(STOPPED_AT) or 0) >= keep_seconds]
    for candidate in overdue:
        if _take(storage, study_id, candidate.number):
            return _claimed(study, storage, study_id, candidate.number, worker)
    return None


def _take(storage: optuna.storages.RDBStorage, study_id: int, number: int) -> bool:
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    # A heartbeat first: a trial that ran before has an old one, and another worker must not find it stale
    # between our claim and our heartbeat thread's first beat.
    storage.record_heartbeat(trial_id)
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _claimed(study, storage, study_id: int, number: int, worker: Optional[str]) -> optuna.Trial:
    trial = optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
    trial.set_user_attr(WORKER, worker)
    trial.set_user_attr(KEPT_FOR, None)  # taken: a retry Optuna makes of it after a kill is free for anyone
    return trial


def keep_for(storage: optuna.storages.RDBStorage, trial: optuna.Trial, worker: Optional[str]) -> None:
    """Put a stopped trial back to WAITING, kept for `worker` (free for any worker when None)."""
    trial.set_user_attr(KEPT_FOR, worker)
    trial.set_user_attr(STOPPED_AT, time.time())
    storage.set_trial_state_values(trial_id(storage, trial), state=TrialState.WAITING)


def trial_id(storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> int:
    """The storage's id of `trial` (Optuna keeps it in a private attribute)."""
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> Iterator[None]:
    """The trial's heartbeat every `heartbeat_interval` seconds while inside, as `study.optimize` keeps it
    (Optuna's own thread is private API)."""
    interval, stop = storage.get_heartbeat_interval(), threading.Event()
    if interval is None:
        yield
        return
    beating = trial_id(storage, trial)

    def beat() -> None:
        while not stop.wait(interval):
            storage.record_heartbeat(beating)

    storage.record_heartbeat(beating)
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
