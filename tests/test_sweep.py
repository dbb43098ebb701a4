"""`cifarlab sweep`: an Optuna study whose trials are ordinary runs of the smoke recipe.

Fast tests run in this process; the ones with several processes, a PostgreSQL server, kill -9 or a
browser are marked slow."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
import yaml
from _browser import CHROMIUM
from _postgres import postgres_server, why_not
from test_user_models import MODULE as USER_MODULE
from test_user_models import user_module  # noqa: F401  (a fixture)

from _folders import needs_fashion, write_fashion_folder
from _runs import SRC
from cifarlab.cli import main
from cifarlab.run.metrics import read_metrics
from cifarlab.run.summary import read_summary
from cifarlab.sweep.definition import define_sweep

FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none", "data.val_split=64"]
ONE_EPOCH = ["train.epochs=1", "schedule.peak_epoch=0.5"]
SPACE = "optim.lr: {low: 0.01, high: 0.2, log: true}\noptim.momentum: {low: 0.5, high: 0.95}\n"


def _space(folder: Path, text: str = SPACE, name: str = "space.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _trials(sweep_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")
    return study.get_trials(deepcopy=False)


def _states(trials) -> dict[str, int]:
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


def _run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (sweep_dir / "trials").rglob("config.yaml"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2-trial sweep over lr and momentum."""
    root = tmp_path_factory.mktemp("sweep")
    space = _space(root)
    code = main(["sweep", "smoke", str(space), *FAST, "--trials", "2",
                 "--dir", str(root / "sweep")])
    return code, root / "sweep"


@pytest.mark.slow
def test_a_space_file_sweep_runs_n_ordinary_runs_and_reports_them(swept):
    code, sweep_dir = swept
    assert code == 0
    trials = _trials(sweep_dir, "smoke-space")
    assert _states(trials) == {"COMPLETE": 2}
    for trial in trials:  # each trial is a finished run whose config holds the trial's parameters
        run_dir = sweep_dir / trial.user_attrs["run_dirs"][0]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["optim"]["lr"] == trial.params["optim.lr"]
        assert config["optim"]["momentum"] == trial.params["optim.momentum"]
        summary = read_summary(run_dir)
        assert summary.status == "completed" and summary.selected_by == "val_acc"
        assert trial.value == max(row.val_acc for row in read_metrics(run_dir) if row.kind == "epoch")
    with open(sweep_dir / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert all(row["test acc of best.pt"].endswith("%") for row in rows)
    assert {float(row["optim.lr"]) for row in rows} == {t.params["optim.lr"] for t in trials}  # every digit
    report = (sweep_dir / "report.md").read_text()
    for title in ("## Trials", "## Best configuration", "Optimisation history", "Parallel coordinates"):
        assert title in report
    shown = report.split("## Best configuration")[0]  # best.yaml, below it, keeps every digit to train it again
    for trial in trials:  # the summary and the trials table show a parameter to 4 significant digits
        assert f"{trial.params['optim.lr']:.4g}" in shown and repr(trial.params["optim.lr"]) not in shown
    for plot in ("history", "parallel", "best_curves"):
        assert (sweep_dir / "plots" / f"{plot}.png").stat().st_size > 1000


@pytest.mark.slow
def test_best_yaml_trains_as_is_into_the_best_trials_config(swept, tmp_path, monkeypatch):
    _, sweep_dir = swept
    best = max(_trials(sweep_dir, "smoke-space"), key=lambda t: t.value)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(sweep_dir / "best.yaml")]) == 0
    trained = yaml.safe_load(next((tmp_path / "runs").rglob("config.yaml")).read_text())
    expected = yaml.safe_load((sweep_dir / best.user_attrs["run_dirs"][0] / "config.yaml").read_text())
    assert trained == expected


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_sweep_and_run_reports_render_in_headless_chromium(swept):
    from _browser import render

    _, sweep_dir = swept
    run_dir = _run_dirs(sweep_dir)[0]
    assert main(["report", str(run_dir)]) == 0  # a trial's run report, as `cifarlab report` writes it
    for page, at_least in ((sweep_dir / "report.html", 3), (run_dir / "report.html", 5)):
        result = render(page)
        assert result["count"] >= at_least, (page, result)
        assert result["broken"] == [] and result["failed"] == [] and result["errors"] == [], (page, result)


@pytest.mark.slow
def test_grid_tries_every_combination_once(tmp_path):
    sweep_dir = tmp_path / "grid"
    assert main(["sweep", "smoke", *FAST, *ONE_EPOCH, "--grid", "seed=0,1", "optim.lr=0.05",
                 "--dir", str(sweep_dir)]) == 0
    trials = _trials(sweep_dir, "smoke-grid")
    assert sorted((t.params["seed"], t.params["optim.lr"]) for t in trials) == [(0, 0.05), (1, 0.05)]
    seeds = sorted(yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in _run_dirs(sweep_dir))
    assert seeds == [0, 1]
    assert (sweep_dir / "best.yaml").is_file()


@pytest.mark.slow
def test_seeds_train_each_configuration_with_s_seeds_and_score_the_mean(tmp_path):
    sweep_dir = tmp_path / "seeds"
    assert main(["sweep", "smoke", *FAST, *ONE_EPOCH, "--grid", "optim.lr=0.05", "--seeds", "2",
                 "--dir", str(sweep_dir)]) == 0
    (trial,) = _trials(sweep_dir, "smoke-grid")
    runs = _run_dirs(sweep_dir)
    assert [run.name for run in runs] == ["seed-0", "seed-1"]
    assert [yaml.safe_load((run / "config.yaml").read_text())["seed"] for run in runs] == [0, 1]
    scores = [max(row.val_acc for row in read_metrics(run) if row.kind == "epoch") for run in runs]
    assert trial.value == pytest.approx(sum(scores) / 2)


@pytest.mark.parametrize("space, extra, named", [
    ("optim.lrr: {low: 0.01, high: 0.1}\n", [], "unknown config key 'optim.lrr'"),
    ("optim.lr: {low: 0.1, high: 0.01}\n", [], "the range is empty"),
    ("optim.lr: {low: -1.0, high: 0.1}\n", [], "optim.lr"),
    ("optim.name: {choices: [sgd, rmsprop2]}\n", [], "optim.name"),
    ("optim.lr: {low: 0.01, high: 0.1, scale: log}\n", [], "allowed: low, high, log, step"),
    (SPACE, ["--pruner", "percentile"], "--pruner must be one of median, hyperband, none"),
    # round 4: each ran (twice the same trial; a study lost at exit whose heartbeats failed)
    ("optim.name: {choices: [sgd, adam, sgd]}\n", [], "space key 'optim.name' lists 'sgd' twice"),
    (SPACE, ["--storage", "sqlite:///"], "in-memory SQLite database"),
    (SPACE, ["--storage", "sqlite:///:memory:"], "in-memory SQLite database"),
])
def test_a_bad_space_is_one_line_and_exit_2_before_any_trial(tmp_path, capsys, space, extra, named):
    path = _space(tmp_path, space)
    assert main(["sweep", "smoke", str(path), *FAST, "--trials", "2", "--dir", str(tmp_path / "s"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_selecting_on_the_test_split_is_refused_unless_asked_for(tmp_path, capsys):
    path = _space(tmp_path)
    # progress=lines: the trial's "run directory:" line checked below is an info line (left out by a quiet run)
    args = ["sweep", "smoke", str(path), "train.threads=1", "output.tensorboard=false", "output.progress=lines",
            *ONE_EPOCH, "--trials", "1", "--dir", str(tmp_path / "s")]
    assert main(args) == 2
    assert "select on the test split" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main([*args, "--allow-test-selection"]) == 0
    assert read_summary(_run_dirs(tmp_path / "s")[0]).selected_by == "test_acc"
    run_lines = [line for line in capsys.readouterr().err.splitlines() if "run directory:" in line]
    assert run_lines and all(line.startswith("[trial 0] ") for line in run_lines)  # which trial said it


@pytest.mark.slow
def test_a_pruned_trial_says_so_in_its_run_and_in_the_sweep_table(tmp_path):
    from cifarlab.sweep import define_sweep, run_sweep

    # A real Optuna pruner whose threshold no accuracy reaches: every trial is pruned after epoch 1 of 2.
    sweep = define_sweep("smoke", FAST, space_file=str(_space(tmp_path)), trials=1, sweep_dir=str(tmp_path / "s"),
                         pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    assert run_sweep(sweep) == 0
    (trial,) = _trials(tmp_path / "s", "smoke-space")
    assert trial.state == optuna.trial.TrialState.PRUNED
    run_dir = _run_dirs(tmp_path / "s")[0]
    summary = read_summary(run_dir)
    assert (summary.epochs_completed, summary.epochs) == (1, 2)
    assert summary.early_stop.reason.startswith("pruned by the ThresholdPruner pruner of sweep smoke-space")
    assert summary.early_stop.pruned_by.startswith("the ThresholdPruner pruner of sweep smoke-space, trial ")
    assert main(["resume", str(run_dir)]) == 2  # finished as far as resume is concerned
    with open(tmp_path / "s" / "trials.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["state"] == "pruned" and row["val_acc (score)"] != "—"
    assert not (tmp_path / "s" / "best.yaml").exists()  # no finished trial, no best configuration


# ------------------------------------------------------------------ several processes, faults

def _command(sweep_dir: Path, *extra: str, space: Path) -> list[str]:
    """The sweep command line: overrides (key=value) first, then the options (argparse wants them so)."""
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    options = [item for item in extra if item not in overrides]
    return [sys.executable, "-m", "cifarlab", "sweep", "smoke", str(space), *FAST, *overrides,
            "--dir", str(sweep_dir), *options]


def _env(*folders: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [SRC, *folders])), "OMP_NUM_THREADS": "1"}


def _two_workers(sweep_dir: Path, space: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    command = _command(sweep_dir, *ONE_EPOCH, "--trials", "3", *extra, space=space)
    workers = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    return [subprocess.CompletedProcess(w.args, w.wait(timeout=600), *w.communicate()) for w in workers]


@pytest.mark.slow
def test_two_workers_on_one_sqlite_file_finish_exactly_n_trials(tmp_path):
    space = _space(tmp_path)
    for done in _two_workers(tmp_path / "s", space, "--no-report"):
        assert done.returncode == 0, done.stderr[-2000:]
    trials = _trials(tmp_path / "s", "smoke-space")
    assert _states(trials).get("COMPLETE") == 3 and len(_run_dirs(tmp_path / "s")) == 3
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)


@pytest.mark.slow
def test_workers_option_runs_trials_in_k_processes_and_reports_once_done(tmp_path):
    command = _command(tmp_path / "s", *ONE_EPOCH, "--trials", "2", "--workers", "2", space=_space(tmp_path))
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _states(_trials(tmp_path / "s", "smoke-space")) == {"COMPLETE": 2}
    with open(tmp_path / "s" / "trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2


@pytest.mark.slow
@pytest.mark.skipif(why_not() is not None, reason=str(why_not()))
def test_two_workers_on_a_postgresql_server_finish_exactly_n_trials(tmp_path):
    space = _space(tmp_path)
    with postgres_server() as url:
        for done in _two_workers(tmp_path / "s", space, "--storage", url):
            assert done.returncode == 0, done.stderr[-2000:]
        trials = optuna.load_study(study_name="smoke-space", storage=url.replace("postgresql:", "postgresql+psycopg2:"))
        states = _states(trials.get_trials(deepcopy=False))
    assert states.get("COMPLETE") == 3 and states.get("RUNNING") is None
    assert len(_run_dirs(tmp_path / "s")) == 3


def _start_and_stop_mid_trial(command: list[str], run_dir: Path, stop, env: Optional[dict] = None) -> subprocess.Popen:
    """Start the sweep and `stop(process)` once its first run has a mid-run last.pt and no summary."""
    process = subprocess.Popen(command, env=env or _env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the first trial never saved a checkpoint"
        time.sleep(0.05)
    stop(process)
    process.wait(timeout=120)
    summary = read_summary(run_dir, required=False)  # none after kill -9; "interrupted" after Ctrl-C
    assert summary is None or summary.status == "interrupted", "stopped too late: the trial had finished"
    return process


def _continue_and_check(command: list[str], sweep_dir: Path, tmp_path: Path, env: Optional[dict] = None,
                        killed: bool = False) -> None:
    done = subprocess.run(command, env=env or _env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first = sweep_dir / "trials" / "0000"
    assert f"-> {first}\n" in done.stderr  # the retry names trial 0's run (whose own lines are quiet: progress=none)
    trials = _trials(sweep_dir, "smoke-space")
    assert len(_run_dirs(sweep_dir)) == 2  # trial 0's run was trained on, no third run
    if killed:  # Optuna's retry of a trial whose heartbeat stopped: a new trial, the failed one left as it was
        assert _states(trials) == {"COMPLETE": 2, "FAIL": 1}
        assert any(t.user_attrs.get("run") == 0 and t.number != 0 for t in trials if t.state.name == "COMPLETE")
    else:  # stopped by a signal: the same trial, waiting, then taken again and finished
        assert _states(trials) == {"COMPLETE": 2} and trials[0].user_attrs["run"] == 0
    # Exact resume: the interrupted run ends where the same config trained without a stop ends.
    assert main(["train", str(first / "config.yaml"), f"output.dir={tmp_path / 'fresh'}"]) == 0
    fresh = next((tmp_path / "fresh").rglob("metrics.csv")).parent
    assert _epochs(first) == _epochs(fresh)


def _epochs(run_dir: Path) -> list[tuple]:
    keys = ("epoch", "step", "train_loss", "train_acc", "val_acc", "test_acc", "test_loss")
    return [tuple(row.value(k) for k in keys) for row in read_metrics(run_dir) if row.kind == "epoch"]


@pytest.mark.slow
def test_kill_9_mid_trial_then_the_same_command_resumes_that_run(tmp_path):
    command = _command(tmp_path / "s", "train.epochs=3", "checkpoint.every_steps=2", "--trials", "2",
                       "--heartbeat", "1", space=_space(tmp_path))
    _start_and_stop_mid_trial(command, tmp_path / "s" / "trials" / "0000", lambda p: p.send_signal(signal.SIGKILL))
    _continue_and_check(command, tmp_path / "s", tmp_path, killed=True)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_same_command_continues(tmp_path):
    command = _command(tmp_path / "s", "train.epochs=3", "checkpoint.every_steps=2", "--trials", "2",
                       space=_space(tmp_path))
    stopped = _start_and_stop_mid_trial(command, tmp_path / "s" / "trials" / "0000",
                                        lambda p: p.send_signal(signal.SIGINT))
    assert stopped.returncode == 130
    err = stopped.stderr.read()
    assert "Traceback" not in err and "Continue it with the same command" in err
    _continue_and_check(command, tmp_path / "s", tmp_path)


@pytest.mark.slow
def test_a_stopped_trial_of_the_users_own_model_resumes_with_the_same_command(tmp_path, request):
    """The recipe names the user's model module (no --import): the same command resumes the stopped trial's
    run, which imports the module its run names (it said "'tiny_mlp' is not registered" and exit 2)."""
    own_model = ["model.name=tiny_mlp", f"model.module={USER_MODULE}", "model.options={hidden: 8}"]
    command = _command(tmp_path / "s", *own_model, "train.epochs=3", "checkpoint.every_steps=2", "--trials", "2",
                       "--heartbeat", "1", space=_space(tmp_path))
    env = _env(request.getfixturevalue("user_module"))  # the module's folder, on this process's path too
    stopped = _start_and_stop_mid_trial(command, tmp_path / "s" / "trials" / "0000",
                                        lambda p: p.send_signal(signal.SIGINT), env)
    assert stopped.returncode == 130
    _continue_and_check(command, tmp_path / "s", tmp_path, env)


@pytest.mark.slow
@needs_fashion
def test_a_sweep_of_the_folder_recipe_decides_its_auto_values_once_from_the_data(tmp_path, capsys, monkeypatch):
    """The folder recipe leaves batch size, epochs and the validation split to the data: a sweep decides
    them once, so the hyperband pruner has an epoch budget and the trials select on the validation split."""
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    write_fashion_folder(tmp_path / "photos", 30, 5)
    sweep = define_sweep("folder", [f"data.dir={tmp_path / 'photos'}"], grid=["optim.lr=0.05"], pruner="hyperband",
                         sweep_dir=str(tmp_path / "s"))
    base = sweep.base_config
    # 300 images, 10 classes: 10% for validation (270 train), batch 8 (>= 25 steps), 18 epochs (~600 steps)
    assert (base.data.val_split, base.train.batch_size, base.train.epochs) == (0.1, 8, 18)
    assert sweep.monitor == "val_acc"
    err = capsys.readouterr().err
    assert "train.batch_size=8, train.epochs=18, data.val_split=0.1" in err


def test_a_shortened_sweep_keeps_the_onecycle_peak_fraction_as_train_does(tmp_path, capsys):
    """`cifarlab sweep smoke train.epochs=1 ...` is accepted as `cifarlab train smoke train.epochs=1` is."""
    from cifarlab.config import load_config
    from cifarlab.sweep import define_sweep

    sweep = define_sweep("smoke", ["train.epochs=1", "data.val_split=64"], grid=["optim.lr=0.05,0.1"],
                         sweep_dir=str(tmp_path / "sweep"))
    trained = load_config("smoke", ["train.epochs=1"])
    assert sweep.base_config.schedule.peak_epoch == trained.schedule.peak_epoch == 0.5
    assert "schedule.peak_epoch moves from 1 of 2 epochs to 0.5 of 1" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()  # defining a sweep writes nothing


# ------------------------------------------------ the definition and storage, checked as train checks a run

@pytest.mark.parametrize("overrides, grid, peaks, refused", [
    # train moves a onecycle recipe's peak with train.epochs: so does every trial of a sweep over it
    ([], ["train.epochs=1,3"], {1: 0.5, 3: 1.5}, None),
    (["train.epochs=1"], ["train.epochs=1,4"], {1: 0.5, 4: 2.0}, None),
    # a peak the user set on the command line is theirs: judged, not moved (as `train` judges it)
    (["schedule.peak_epoch=1"], ["train.epochs=1,3"], None, "schedule.peak_epoch must be in (0, train.epochs=1)"),
    (["schedule.peak_epoch=0.5"], ["train.epochs=1,3"], {1: 0.5, 3: 0.5}, None),
], ids=["grid-of-epochs", "shortened-then-grid", "users-peak-too-late", "users-peak-kept"])
def test_a_sweep_over_train_epochs_moves_the_onecycle_peak_as_train_does(tmp_path, overrides, grid, peaks, refused):
    from cifarlab.errors import UserError

    args = dict(grid=grid, sweep_dir=str(tmp_path / "s"))
    if refused:
        with pytest.raises(UserError, match=refused.replace("(", r"\(").replace(")", r"\)")):
            define_sweep("smoke", ["data.val_split=64", *overrides], **args)
        return
    sweep = define_sweep("smoke", ["data.val_split=64", *overrides], **args)
    assert {epochs: sweep.trial_config({"train.epochs": epochs}).schedule.peak_epoch for epochs in peaks} == peaks


def _open(tmp_path: Path, overrides: list[str], pruner: str = "median", **kwargs):
    from cifarlab.sweep.study import open_study

    sweep = define_sweep("smoke", ["data.val_split=64", *overrides], grid=["optim.lr=0.05,0.1"], pruner=pruner,
                         sweep_dir=str(tmp_path / "s"), **kwargs)
    return open_study(sweep)


@pytest.mark.parametrize("first, then, differs", [
    ((["optim.lr=0.1", "seed=1"], "median"), (["seed=1", "optim.lr=0.10"], "median"), None),
    ((["optim.momentum=0.9"], "median"), (["optim.momentum=9e-1"], "median"), None),
    ((["seed=1"], "median"), (["seed=1"], "hyperband"), "pruner"),
    ((["seed=1"], "median"), (["seed=2"], "median"), "overrides (seed: 2 here, 1 in the study)"),
    ((["seed=1"], "median"), (["seed=1", "optim.momentum=0.5"], "median"),
     "overrides (optim.momentum: 0.5 here, not set in the study)"),
], ids=["same-values-other-order", "same-value-other-spelling", "other-pruner", "other-value", "other-key"])
def test_a_sweep_joins_its_study_when_its_overrides_set_the_same_values_and_its_pruner_is_the_same(
        tmp_path, first, then, differs):
    from cifarlab.errors import UserError

    _open(tmp_path, first[0], first[1])
    if differs is None:
        _open(tmp_path, then[0], then[1])
        return
    with pytest.raises(UserError, match=re.escape(f"another definition (its {differs} differs from this command's)")):
        _open(tmp_path, then[0], then[1])


def test_a_study_recorded_with_override_text_and_no_pruner_is_still_joined(tmp_path):
    """Studies started before the identity compared values (and held the pruner) go on."""
    import json

    study = _open(tmp_path, ["seed=1"])
    old = json.loads(study.user_attrs["cifarlab_sweep"])
    old["overrides"] = ["data.val_split=64", "seed=1"]
    del old["pruner"]
    study.set_user_attr("cifarlab_sweep", json.dumps(old))
    _open(tmp_path, ["seed=1"])


def _sqlite_with_a_table(path: Path) -> Path:
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('mine')")
    connection.close()
    return path


def _optuna_db_with_another_study(path: Path) -> Path:
    optuna.create_study(storage=f"sqlite:///{path}", study_name="someone-elses")
    return path


def _optuna_schema_half_made(path: Path, extra_table: Optional[str] = None) -> Path:
    """What a second worker found once (1 of 3 whole-suite runs, an AMD EPYC Zen 3): the first worker's Optuna had
    made `studies` and `version_info` and not yet the rest (SQLite commits each CREATE TABLE on its own)."""
    import sqlite3

    optuna.storages.RDBStorage(f"sqlite:///{path}")  # the schema, and version_info's row, as Optuna writes them
    connection = sqlite3.connect(path)
    with connection:
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            if table not in ("studies", "version_info"):
                connection.execute(f"DROP TABLE {table}")
        if extra_table:
            connection.execute(f"CREATE TABLE {extra_table} (text TEXT)")
    connection.close()
    return path


@pytest.mark.parametrize("make, refused", [
    (_sqlite_with_a_table, "is an SQLite database but not an Optuna study's (its tables: notes)"),
    (lambda p: p.write_text("my notes\n") and p, "is not an SQLite database"),
    (lambda p: p.mkdir() or p, "names a folder"),
    (lambda p: p.write_bytes(b"") and p, None),
    (_optuna_db_with_another_study, None),
    (_optuna_schema_half_made, None),
    (lambda p: _optuna_schema_half_made(p, "notes"),
     "not an Optuna study's (its tables: notes, studies, version_info)"),
], ids=["another-sqlite-database", "a-text-file", "a-folder", "an-empty-file", "an-optuna-database",
        "a-schema-another-worker-is-making", "optuna-names-beside-a-table-of-yours"])
def test_storage_must_be_an_optuna_database_or_new(tmp_path, capsys, make, refused):
    from _runs import tree_hashes

    db = make(tmp_path / "other.db") or tmp_path / "other.db"
    argv = ["sweep", "smoke", "data.val_split=64", *FAST[:3], "--grid", "optim.lr=0.05", "--storage",
            f"sqlite:///{db}", "--dir", str(tmp_path / "s")]
    if refused is None:
        _open(tmp_path, [], storage=f"sqlite:///{db}")
        return
    before = tree_hashes(tmp_path)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and refused in lines[0], lines
    assert tree_hashes(tmp_path) == before and not (tmp_path / "s").exists()


KILLED_IN_A_TRANSACTION = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size=1")  # pages spill to the file mid-transaction: the journal is hot
connection.execute("BEGIN IMMEDIATE")
connection.execute("CREATE TABLE half_written (x)")
connection.executemany("INSERT INTO half_written VALUES (?)", [(i,) for i in range(5000)])
print("in the transaction", flush=True)
time.sleep(60)
"""


def test_a_study_left_mid_transaction_by_a_killed_process_is_rolled_back_and_joined(tmp_path):
    # kill -9 of a sweep inside a write (a heartbeat, a trial's report) leaves study.db-journal, which only a
    # writer may roll back: the read-only check of the file failed ("attempt to write a readonly database",
    # exit 2) and the killed sweep could not be resumed (the adversarial round's sweep-killed-user-module-resumes).
    import sqlite3

    db = tmp_path / "study.db"
    _open(tmp_path, [], storage=f"sqlite:///{db}")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_IN_A_TRANSACTION, str(db)], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "in the transaction"
    writer.kill()
    writer.wait()
    journal = db.with_name("study.db-journal")
    assert journal.stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the case is the one the round hit
        sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True).execute("SELECT name FROM sqlite_master").fetchall()
    study = _open(tmp_path, [], storage=f"sqlite:///{db}")
    assert not journal.exists()
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    connection.close()
    assert "half_written" not in tables and "studies" in tables  # back to the last commit
    assert study.study_name


@pytest.mark.parametrize("codes, states, expected", [
    ([0, 0], ["COMPLETE", "COMPLETE"], 0),
    ([0, -9], ["COMPLETE", "FAIL", "COMPLETE"], 0),  # killed; the other worker retried its trial and finished
    ([-9, 0], ["COMPLETE", "PRUNED"], 0),
    ([130, -9], ["COMPLETE", "FAIL"], 130),
    ([-9, -9], ["COMPLETE", "RUNNING"], "a sweep worker failed"),  # nobody left to finish the study
    ([1, 0], ["COMPLETE", "FAIL"], "a sweep worker failed"),
], ids=["done", "one-killed-study-done", "killed-pruned-done", "stopped", "all-killed-not-done", "failed-not-done"])
def test_a_killed_worker_fails_the_sweep_only_when_the_study_is_not_done(tmp_path, codes, states, expected):
    from cifarlab.errors import UserError
    from cifarlab.sweep.workers import workers_outcome

    sweep = define_sweep("smoke", ["data.val_split=64"], grid=["optim.lr=0.05,0.1"], sweep_dir=str(tmp_path / "s"))
    study = optuna.create_study(direction="maximize")
    for state in states:
        finished = state in ("COMPLETE", "PRUNED")
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState[state],
                                                  value=0.5 if state == "COMPLETE" else None,
                                                  intermediate_values={1: 0.4} if finished else {}))
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            workers_outcome(sweep, study, codes)
    else:
        assert workers_outcome(sweep, study, codes) == expected


@pytest.mark.slow
@pytest.mark.parametrize("where", ["new-folder-on-it", "the-folder-itself"])
def test_a_sweep_folder_on_a_read_only_disk_is_one_line(tmp_path, where):
    from test_data_identity import _one_line, _read_only

    disk = tmp_path / "ro"
    disk.mkdir()
    folder = disk / "sweep" if where == "new-folder-on-it" else disk
    done = _read_only(["sweep", "smoke", "data.val_split=64", *FAST[:3], "--grid", "optim.lr=0.05", "--dir",
                       str(folder)], [disk])
    _one_line(done, "sweep", str(folder), "written")
    assert not any(disk.iterdir())


@pytest.mark.parametrize("writes, shown", [
    (["run directory: r\n", "data: x\n"], "[t] run directory: r\n[t] data: x\n"),
    (["epoch 1/2", " 50%", "\rn", "\n"], "[t] epoch 1/2 50%\r[t] n\n"),  # a bar redrawn after \r
    (["a\n\nb"], "[t] a\n\n[t] b"),  # an empty line stays empty
], ids=["lines", "bar-redraws", "empty-line"])
def test_a_trials_output_lines_start_with_its_trial(writes, shown):
    import io

    from cifarlab.sweep.trial import PrefixedLines

    out = io.StringIO()
    stream = PrefixedLines(out, "[t] ")
    for text in writes:
        stream.write(text)
    assert out.getvalue() == shown


def _worker_pids(parent: int) -> list[int]:
    """The sweep's worker processes (multiprocessing's spawned children, not its resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    pids = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(pid)
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc (Linux)")
def test_a_worker_killed_mid_trial_is_replaced_and_the_sweep_still_succeeds(tmp_path):
    """kill -9 of one of `--workers 2`: the other takes its trial over once the heartbeat stops, resumes its
    run, and the study ends with its trials; the sweep exits 0 with one line about the lost worker."""
    command = _command(tmp_path / "s", "train.epochs=2", "checkpoint.every_steps=2", "--trials", "2", "--workers",
                       "2", "--heartbeat", "1", space=_space(tmp_path))
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "s" / "trials").glob("*/checkpoints/last.pt")):
        assert process.poll() is None and time.monotonic() < deadline, "no trial saved a checkpoint"
        time.sleep(0.05)
    victim = _worker_pids(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    err = process.communicate(timeout=600)[1]
    assert process.returncode == 0, err[-3000:]
    assert "a worker ended with exit code -9 (killed?), and the others finished its trials" in err
    assert _states(_trials(tmp_path / "s", "smoke-space")).get("COMPLETE") == 2
    assert (tmp_path / "s" / "report.md").is_file()


def _one_trial_sweep(tmp_path: Path):
    """A one-trial grid sweep of two epochs, opened: (sweep, study, storage)."""
    from cifarlab.sweep.study import open_study

    sweep = define_sweep("smoke", [*FAST, "train.epochs=2", "checkpoint.every_steps=2"], grid=["optim.lr=0.05"],
                         sweep_dir=str(tmp_path / "s"), heartbeat_seconds=1)
    study = open_study(sweep)
    return sweep, study, study._storage


def _retry(study, storage, trial) -> None:
    """What a worker finding `trial`'s heartbeat stale does (Optuna's fail_stale_trials): FAIL it, enqueue a retry."""
    from optuna.trial import TrialState

    from cifarlab.sweep.claim import trial_id
    from cifarlab.sweep.storage import retry_callback

    number = trial_id(storage, trial)
    assert storage.set_trial_state_values(number, state=TrialState.FAIL)
    retry_callback()(study, storage.get_trial(number))


@pytest.mark.slow
def test_a_trial_retried_while_its_worker_still_trains_it_is_trained_once_and_recorded_by_the_retry(
        tmp_path, monkeypatch, capsys):
    """A worker's heartbeat can come late on a loaded machine (a starved process, a busy SQLite file), and
    another worker then retries its trial though it is alive. The first worker finishes its run and says
    so instead of crashing on Optuna's 'trial already finished'; the retry resumes that finished run and
    records it: the study completes, and no epoch is trained twice."""
    from optuna.trial import TrialState

    from cifarlab.sweep import study as studies
    from cifarlab.sweep.claim import claim
    from cifarlab.sweep.storage import RUN_ATTR

    sweep, study, storage = _one_trial_sweep(tmp_path)
    trial = claim(study, storage, sweep.trials, None)
    trained = studies.runs.train_or_resume

    def taken_over_as_it_starts(cfg, run_dir, callbacks):
        _retry(study, storage, trial)  # another worker, as this one starts training
        return trained(cfg, run_dir, callbacks)

    monkeypatch.setattr(studies.runs, "train_or_resume", taken_over_as_it_starts)
    studies._run_trial(study, storage, trial, studies._Objective(sweep, study), None)  # no exception
    assert "trial 0 was retried by another worker while this one had it" in capsys.readouterr().err
    monkeypatch.setattr(studies.runs, "train_or_resume", trained)

    studies.work(sweep, study, None)  # the other worker: takes the retry, finds the run done, records it
    trials = study.get_trials(deepcopy=False)
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert trials[1].user_attrs[RUN_ATTR] == 0 and trials[1].value is not None
    run_dir = sweep.sweep_dir / trials[1].user_attrs["run_dirs"][0]
    rows = [(row.kind, row.epoch, row.step) for row in read_metrics(run_dir)]
    assert len(rows) == len(set(rows)) and read_summary(run_dir).status == "completed"


@pytest.mark.slow
def test_a_retry_waits_for_a_run_another_process_still_trains_and_never_removes_it(tmp_path):
    """A retried trial whose run directory is locked by a live process (the late worker, before its first
    checkpoint) waits for the lock instead of failing the worker or removing that process's run."""
    import threading

    from optuna.trial import TrialState

    from cifarlab.run.lock import RunLock
    from cifarlab.sweep import study as studies
    from cifarlab.sweep.claim import claim
    from cifarlab.sweep.storage import RUN_ATTR
    from cifarlab.sweep.trial import run_dir_for

    sweep, study, storage = _one_trial_sweep(tmp_path)
    trial = claim(study, storage, sweep.trials, None)
    trial.set_user_attr(RUN_ATTR, trial.number)  # as the first worker's objective does before it trains
    run_dir = run_dir_for(sweep.sweep_dir, 0, 0, 1)
    run_dir.mkdir(parents=True)
    (run_dir / "being-written").write_text("the first worker's\n")
    lock = RunLock(run_dir).acquire()  # the first worker, alive, no checkpoint yet
    _retry(study, storage, trial)
    errors: list[BaseException] = []

    def other_worker() -> None:
        try:
            studies.work(sweep, study, None)
        except BaseException as err:  # noqa: BLE001  (reported by the assertion below)
            errors.append(err)

    worker = threading.Thread(target=other_worker)
    worker.start()
    worker.join(timeout=4)
    assert worker.is_alive() and not errors, errors  # waiting, not failed
    assert (run_dir / "being-written").exists()  # the live process's run was not removed
    lock.release()
    worker.join(timeout=300)
    assert not worker.is_alive() and not errors, errors
    trials = study.get_trials(deepcopy=False)
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]
    assert read_summary(run_dir).status == "completed"


@pytest.mark.slow
def test_a_worker_paused_past_its_heartbeat_then_resumed_still_ends_the_sweep_with_its_trial_trained_once(tmp_path):
    """The adversarial round's `[1, 2]`: a `--workers 2` sweep whose training worker is stopped (SIGSTOP, as
    a starved or suspended process) for longer than twice `--heartbeat`. The other worker retries the
    trial; before, the paused worker then crashed on Optuna's 'already finished' (exit 1) and the retry on
    the run's lock (exit 2). Now the sweep exits 0 with the trial's run trained once."""
    command = [sys.executable, "-m", "cifarlab", "sweep", "smoke", *FAST, "train.epochs=3", "checkpoint.every_steps=2",
               "--grid", "optim.lr=0.05", "--dir", str(tmp_path / "s"), "--workers", "2", "--heartbeat", "1"]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "s" / "trials").glob("*/checkpoints/last.pt")):
        assert process.poll() is None and time.monotonic() < deadline, "no trial saved a checkpoint"
        time.sleep(0.05)
    run_dir = next((tmp_path / "s" / "trials").iterdir()).resolve()
    trainer = [pid for pid in _worker_pids(process.pid) if _holds(pid, run_dir)]
    assert len(trainer) == 1
    os.kill(trainer[0], signal.SIGSTOP)
    # Paused until the other worker has retried the trial (its heartbeat is stale after twice 1 s, and the
    # other worker looks between its own steps): a fixed 4 s was too short on a loaded machine, where that
    # worker was still starting, and the case did not happen.
    # Not any FAIL: the two workers can both find the study empty at the start and both make a trial, and the
    # second is failed as surplus (`sweep/study.py`, `_admit`) before it trains. Waiting for that FAIL would
    # resume the worker before any retry: the likeliest reading (from the code; not reproduced) of a run where
    # no retry happened (1 of 2 whole-suite runs on an AMD EPYC Zen 3).
    paused_until = time.monotonic() + 120
    while time.monotonic() < paused_until and "FAIL" not in _states(_own(_trials(tmp_path / "s", "smoke-grid"))):
        time.sleep(0.5)
    os.kill(trainer[0], signal.SIGCONT)
    err = process.communicate(timeout=600)[1]
    assert process.returncode == 0, err[-3000:]
    trials = _trials(tmp_path / "s", "smoke-grid")
    described = [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert "trial 0 was retried by another worker while this one had it" in err, (described, err[-3000:])
    assert _states(_own(trials)) == {"FAIL": 1, "COMPLETE": 1}, described
    assert all(t.state.name == "FAIL" for t in trials if t.user_attrs.get("surplus")), described
    rows = [(row.kind, row.epoch, row.step) for row in read_metrics(run_dir)]
    assert len(rows) == len(set(rows)) and read_summary(run_dir).status == "completed"


def _own(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials a sweep trained or retried: not those failed as surplus at once (a race of two workers for
    the first trial)."""
    return [t for t in trials if not t.user_attrs.get("surplus")]


def _holds(pid: int, folder: Path) -> bool:
    """Does process `pid` hold `folder` open (a run's lock is a descriptor on its directory)?"""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(folder) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
