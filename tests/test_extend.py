"""Extend or fine-tune: `resume RUN --epochs N` continues a run to N epochs in all, and `model.init_from`
starts a new run from a checkpoint's weights. All on the synthetic `smoke` recipe on CPU."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from _compare import assert_same_checkpoint

import cifarlab
from _runs import only_run, signal_at_step
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.errors import UserError
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.trainer.optim import Schedule, build_optimizer

COMMON = ["deterministic=true", "train.device=cpu", "train.threads=1", "train.precision=fp32",
          "output.tensorboard=false", "output.progress=none"]
TIMING = {"elapsed_seconds", "images_per_second", "mfu"}


def _train(root: Path, *extra: str) -> Path:
    assert main(["train", "smoke", f"output.dir={root}", *COMMON, *extra]) == 0
    (run_dir,) = [p for p in (root / "smoke").iterdir() if p.is_dir()]
    return run_dir


def _finished(root: Path, shared_runs) -> Path:
    """A finished 2-epoch smoke run (COMMON) under `root`: this test's copy of the one trained per session."""
    return only_run(shared_runs.copy("extend-finished", _train, root))


def _rows(run_dir: Path, kind: str = "epoch") -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING}
                for row in csv.DictReader(handle) if row["kind"] == kind]


def _all_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_extending_a_finished_onecycle_run_holds_the_final_lr_and_records_the_new_total(tmp_path, shared_runs):
    # onecycle over 2 epochs, peak at epoch 1, no annihilation: ends at 0.05 / 10
    run_dir = _finished(tmp_path, shared_runs)
    before = _rows(run_dir)
    final_lr = float(before[-1]["lr"])
    assert final_lr == pytest.approx(0.005)

    assert main(["resume", str(run_dir), "--epochs", "4"]) == 0

    rows = _all_rows(run_dir)
    epochs = [row for row in rows if row["kind"] == "epoch"]
    assert [int(row["epoch"]) for row in epochs] == [1, 2, 3, 4]
    assert _rows(run_dir)[:2] == before  # the finished epochs are kept as they were
    added = [float(row["lr"]) for row in rows if int(row["epoch"]) > 2]
    assert added and all(lr == pytest.approx(final_lr, rel=1e-6) for lr in added)  # never back to the peak 0.05
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["epochs"] == 4 and config["schedule"]["planned_epochs"] == 2
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["status"], last["config"]["train"]["epochs"]) == (4, "completed", 4)
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert (summary["epochs_completed"], summary["epochs"], summary["status"]) == (4, 4, "completed")


def test_more_extends_a_finished_run_by_that_many_epochs_from_python_as_from_the_cli(tmp_path):
    run_dir = _train(tmp_path, "train.epochs=1")
    with pytest.raises(UserError, match="not both"):
        cifarlab.resume(run_dir, epochs=3, more=1)
    assert cifarlab.resume(run_dir, more=1).summary.epochs == 2
    assert main(["resume", str(run_dir), "--more", "1"]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["train"]["epochs"] == 3


@pytest.mark.slow
def test_a_step_schedule_extended_equals_a_run_planned_that_long(tmp_path):
    """Per-epoch schedules do not depend on the total: 2 epochs extended to 3 is the 3-epoch run."""
    schedule = ["schedule.name=step", "schedule.step_size=1", "schedule.gamma=0.5"]
    extended = _train(tmp_path / "a", *schedule)
    run = cifarlab.resume(extended, epochs=3)
    reference = _train(tmp_path / "b", *schedule, "train.epochs=3")
    assert run.summary.epochs_completed == 3
    assert _rows(extended) == _rows(reference)
    assert _rows(extended, "step") == _rows(reference, "step")
    assert [float(row["lr"]) for row in _rows(extended)] == pytest.approx([0.05, 0.025, 0.0125])
    assert_same_checkpoint(extended / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt", ["model"])


def test_cosine_extension_from_python_stays_at_min_lr_and_an_interrupted_extension_resumes(tmp_path):
    run_dir = _train(tmp_path, "schedule.name=cosine", "schedule.min_lr=0.002")
    assert float(_rows(run_dir)[-1]["lr"]) < 0.05 / 2

    # Stop the extension in its second added epoch, then resume it without --epochs: the total is recorded.
    stopped = cifarlab.resume(run_dir, epochs=4, callbacks=[signal_at_step(28)])
    assert stopped.summary.status == stopped.status == "interrupted"
    run = cifarlab.resume(run_dir)
    assert run.summary.status == "completed" and run.summary.epochs_completed == 4

    added = [float(row["lr"]) for row in _all_rows(run_dir) if int(row["epoch"]) > 2]
    assert added and all(lr == pytest.approx(0.002, rel=1e-6) for lr in added)


@pytest.mark.parametrize("epochs", ["2", "1", "0"])
def test_extending_to_no_more_epochs_than_done_is_one_line_and_changes_nothing(tmp_path, capsys, epochs, shared_runs):
    run_dir = _finished(tmp_path, shared_runs)
    before = _files(run_dir)
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--epochs", epochs]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cifarlab resume: error: --epochs must be more than the 2 epochs this run has done, got {epochs}"
    assert _files(run_dir) == before


def test_resuming_a_finished_run_without_epochs_points_to_the_extension(tmp_path, capsys, shared_runs):
    run_dir = _finished(tmp_path, shared_runs)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert f"cifarlab resume {run_dir} --epochs N" in capsys.readouterr().err


def test_onecycle_schedule_past_its_plan_holds_min_lr_per_group():
    cfg = load_config("smoke", ["optim.norm_lr_scale=4", "schedule.final_div_factor=100"])
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    optimizer = build_optimizer(model, cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule, cfg.optim.lr, epochs=2, steps_per_epoch=3)
    lrs = []
    for _ in range(10):  # 6 planned steps, 4 past the plan
        optimizer.step()
        schedule.after_step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
    final = [0.05 / 10 / 100, 0.05 * 4 / 10 / 100]
    for past in lrs[6:]:
        assert past == pytest.approx(final)
    assert max(lr[0] for lr in lrs[5:]) <= final[0] * (1 + 1e-6)


# ------------------------------------------------------------------------------- model.init_from

def _start_of(run_args: list[str]) -> dict:
    """What a new run starts from: its weights, optimizer state and step, seen by a user callback."""
    from cifarlab.trainer.callbacks import Callback

    seen = {}

    class Capture(Callback):
        def on_fit_start(self, state):
            seen.update(model={k: v.clone() for k, v in state.objects.model.state_dict().items()},
                        optimizer_state=dict(state.objects.optimizer.state), step=state.progress.step,
                        lr=state.objects.schedule.lr)

    cifarlab.train("smoke", run_args, callbacks=[Capture()])
    return seen


def test_init_from_starts_a_new_run_from_the_weights_with_a_fresh_optimizer(tmp_path, shared_runs):
    trained = _finished(tmp_path / "a", shared_runs)
    checkpoint = trained / "checkpoints" / "best.pt"
    start = _start_of([f"output.dir={tmp_path / 'b'}", *COMMON, f"model.init_from={checkpoint}", "train.epochs=1",
                       "schedule.peak_epoch=0.5"])
    weights = load_checkpoint(checkpoint)["model"]
    assert weights.keys() == start["model"].keys()
    assert all(torch.equal(start["model"][key], value) for key, value in weights.items())
    assert start["optimizer_state"] == {} and start["step"] == 0
    assert start["lr"] == pytest.approx(0.05 / 10)  # a fresh onecycle starts at lr_peak / div_factor
    (new_run,) = (tmp_path / "b" / "smoke").iterdir()
    assert yaml.safe_load((new_run / "config.yaml").read_text())["model"]["init_from"] == str(checkpoint)
    assert [int(row["epoch"]) for row in _rows(new_run)] == [1]


@pytest.mark.slow
def test_init_from_other_classes_needs_init_head_false_and_then_keeps_all_but_the_head(tmp_path, capsys, shared_runs):
    checkpoint = _finished(tmp_path / "a", shared_runs) / "checkpoints" / "best.pt"
    five = [f"output.dir={tmp_path / 'b'}", *COMMON, f"model.init_from={checkpoint}", "train.epochs=1",
            "schedule.peak_epoch=0.5", "data.options.num_classes=5"]
    capsys.readouterr()
    assert main(["train", "smoke", *five]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained on 10 classes" in err and "has 5" in err
    assert "model.init_head=false" in err
    assert not (tmp_path / "b" / "smoke").exists() or not any((tmp_path / "b" / "smoke").iterdir())

    start = _start_of([*five, "model.init_head=false"])
    weights = load_checkpoint(checkpoint)["model"]
    assert start["model"]["classifier.weight"].shape[0] == 5
    body = [key for key in weights if not key.startswith("classifier.")]
    assert body and all(torch.equal(start["model"][key], weights[key]) for key in body)


@pytest.mark.parametrize("override, expected", [
    ("model.options.width=4", "does not fit model 'convnet'"),
    ("model.name=resnet18 model.options={}", "holds a 'convnet' model but model.name is 'resnet18'"),
    ("data.options.channels=1", "trained on 3-channel images, this data has 1 channels"),
])
def test_init_from_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys, override, expected, shared_runs):
    checkpoint = _finished(tmp_path / "a", shared_runs) / "checkpoints" / "best.pt"
    capsys.readouterr()
    code = main(["train", "smoke", f"output.dir={tmp_path / 'b'}", *COMMON, f"model.init_from={checkpoint}",
                 *override.split()])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_init_from_a_missing_file_names_the_key(tmp_path, capsys):
    code = main(["train", "smoke", f"output.dir={tmp_path}", *COMMON, f"model.init_from={tmp_path / 'nope.pt'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cifarlab train: error: model.init_from: checkpoint") and "does not exist" in err


def test_every_registered_model_has_a_classifier_head_giving_the_logits():
    from cifarlab.models.registry import create_model, list_models
    from cifarlab.trainer.warmstart import classifier_head

    for name in list_models():
        model = create_model(name, num_classes=7)
        assert dict(model.named_modules())[classifier_head(model, name)].out_features == 7, name
