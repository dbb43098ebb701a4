"""Which trial a sweep worker takes (`sweep/claim.py`): a stopped trial waits for the worker it was stopped in,
named by its SLURM array task; others leave it alone until it has waited too long. In process, on SQLite."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from cifarlab.errors import UserError
from cifarlab.sweep.claim import KEPT_FOR, STOPPED_AT, claim, keep_for, worker_identity
from cifarlab.sweep.storage import open_storage


@pytest.fixture
def study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_seconds=1)
    return optuna.create_study(storage=storage, study_name="s"), storage


def test_a_stopped_trial_waits_for_its_worker_and_others_take_new_trials_meanwhile(study):
    study, storage = study
    first = claim(study, storage, 3, "slurm-7_0")
    second = claim(study, storage, 3, "slurm-7_1")
    keep_for(storage, first, "slurm-7_0")  # stopped by a signal: back to WAITING, the same trial
    assert study.get_trials()[first.number].state == TrialState.WAITING
    study.tell(second, 1.0)
    third = claim(study, storage, 3, "slurm-7_1")  # not the kept one: a new trial while fewer than 3 count
    assert third.number == 2
    study.tell(third, 1.0)
    assert claim(study, storage, 3, "slurm-7_1") is None  # nothing left for it: the kept trial is not its
    again = claim(study, storage, 3, "slurm-7_0")  # the requeued task takes its own trial again
    assert again.number == first.number and study.get_trials()[first.number].state == TrialState.RUNNING
    assert study.get_trials()[first.number].user_attrs[KEPT_FOR] is None
    assert len(study.get_trials()) == 3


def test_a_kept_trial_is_taken_over_once_it_has_waited_too_long_and_one_of_no_worker_at_once(study):
    study, storage = study
    kept = claim(study, storage, 2, "slurm-7_0")
    keep_for(storage, kept, "slurm-7_0")
    study.tell(claim(study, storage, 2, "slurm-7_1"), 1.0)
    assert claim(study, storage, 2, "slurm-7_1", keep_seconds=900) is None
    kept.set_user_attr(STOPPED_AT, study.get_trials()[kept.number].user_attrs[STOPPED_AT] - 901)
    assert claim(study, storage, 2, "slurm-7_1", keep_seconds=900).number == kept.number  # its task never came
    free = claim(study, storage, 3, None)
    keep_for(storage, free, None)  # stopped outside a scheduler: any worker may resume it
    assert claim(study, storage, 3, "elsewhere").number == free.number


def test_a_worker_is_named_by_its_array_task_its_job_or_its_option():
    array = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"}
    assert worker_identity(None, array) == "slurm-10_2"  # kept by SLURM when it requeues the task
    assert worker_identity(None, {"SLURM_JOB_ID": "12"}) == "slurm-12"
    assert worker_identity(None, {}) is None
    assert worker_identity("node-3", array) == "node-3"
    with pytest.raises(UserError, match="--worker-id must be a non-empty printable name"):
        worker_identity(" ", {})
