"""Weights & Biases in offline mode, read back from W&B's own run files: the config, every epoch row, the
summary and the report's plots, and `resume` logging into the same W&B run."""
from __future__ import annotations

import importlib.util
import json

import pytest
from _wandb_records import offline_run

import cifarlab
from cifarlab.cli import main

QUIET = ["train.device=cpu", "train.threads=1", "output.progress=none", "output.tensorboard=false"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written under ~
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


@pytest.mark.slow  # two W&B processes start (~10 s each on a loaded 2-core machine) and a report is made
def test_wandb_offline_run_holds_config_epochs_summary_plots_and_resume_continues_it(tmp_path, offline):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "train.epochs=1", "schedule.peak_epoch=0.5",
                                   "output.report=true", "output.wandb=true"])
    run_id = json.loads((run.run_dir / "wandb.json").read_text())["run_id"]
    extended = cifarlab.resume(run.run_dir, epochs=2)
    import wandb

    wandb.teardown()  # wandb-core writes the run files asynchronously; its shutdown (as at exit) flushes them

    files = sorted(run.run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # one per process, both the same W&B run: `wandb sync` merges them
    logged = offline_run(files)
    assert set(logged["run_ids"]) == {run_id} and logged["exit_codes"] == [0, 0]
    assert logged["config"]["optim"]["lr"] == 0.05 and logged["config"]["model"]["name"] == "convnet"
    assert logged["config"]["train"]["epochs"] == 2  # the extension, as resume ran it
    epochs = [row for row in logged["history"] if "epoch" in row]
    assert [(row["epoch"], row["_step"]) for row in epochs] == [(1, 8), (2, 16)]
    assert [row["epoch/test_acc"] for row in epochs] == pytest.approx([row.test_acc for row in extended.history])
    assert any("step/train_loss" in row for row in logged["history"])
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert logged["summary"]["best_test_acc"] == pytest.approx(summary["best_test_acc"])
    assert logged["summary"]["epochs_completed"] == 2
    images = {key: value for row in logged["history"] for key, value in row.items() if key.startswith("plots/")}
    assert "plots/curves" in images and images["plots/curves"]["_type"] == "image-file"
    media = list(run.run_dir.glob(f"wandb/offline-run-*-{run_id}/files/{images['plots/curves']['path']}"))
    assert media and media[0].stat().st_size > 1000


def test_wandb_missing_is_one_line_before_any_run_directory(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", "smoke", f"output.dir={tmp_path}", *QUIET, "output.wandb=true"]) == 2
    assert capsys.readouterr().err.strip() == ("cifarlab train: error: output.wandb=true needs Weights & Biases: "
                                               "pip install 'cifarlab[wandb]' (or set output.wandb=false)")
    assert not (tmp_path / "smoke").exists()


def test_wandb_that_cannot_start_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, offline, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "bogus")  # W&B refuses its own setting at init, as it would a missing login
    assert main(["train", "smoke", f"output.dir={tmp_path / 'runs'}", *QUIET, "output.wandb=true"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("cifarlab train: error:")]
    assert len(errors) == 1 and "Weights & Biases could not start" in errors[0] and "Traceback" not in err, err
    assert "WANDB_MODE=offline" in errors[0]
    # The run had said its directory (it had started), but nothing was trained: it leaves nothing behind.
    assert not (tmp_path / "runs" / "smoke").exists() or not any((tmp_path / "runs" / "smoke").iterdir())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_runs):
    """A finished 1-epoch smoke run (trained without W&B: the cases below turn output.wandb on in a copy)."""
    from _runs import finished_and_open_runs

    return finished_and_open_runs(tmp_path_factory.mktemp("runs"), shared_runs)["done"]


def _no_wandb(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))


# A W&B run resumed (`resume --epochs 2`) with a wandb.json its logger cannot use: refused in one line before
# config.yaml says 2 epochs (it said so, and the run crashed in W&B's start with a traceback).
REFUSED_RESUMES = [
    ("not-json", "{not json", ["wandb.json is not readable", "delete it to log the rest into a new W&B run"]),
    ("a-list", "[]", ["wandb.json is not readable", "a JSON object is expected"]),
    ("run-id-a-number", '{"run_id": 5, "project": "p"}', ["wandb.json is not readable", "no run_id string"]),
    ("no-project", '{"run_id": "abc"}', ["wandb.json is not readable", "no project string"]),
    ("a-folder", None, ["wandb.json is not readable"]),
    ("wandb-not-installed", '{"run_id": "abc", "project": "p"}', ["output.wandb=true needs Weights & Biases"]),
]


@pytest.mark.parametrize("case, text, words", REFUSED_RESUMES, ids=[case[0] for case in REFUSED_RESUMES])
def test_a_resume_whose_wandb_record_cannot_be_used_is_one_line_and_changes_nothing(
        tmp_path, capsys, monkeypatch, finished_run, case, text, words):
    from _runs import assert_refused, tampered_copy

    if case == "wandb-not-installed":
        _no_wandb(monkeypatch)
    else:
        pytest.importorskip("wandb")
    run = tampered_copy(finished_run, tmp_path / "r", lambda payload: payload["config"]["output"].update(wandb=True))
    if text is None:
        (run / "wandb.json").mkdir()
    else:
        (run / "wandb.json").write_text(text)
    assert_refused(["resume", str(run), "--epochs", "2"], words, {"run": run}, capsys, tmp_path)
