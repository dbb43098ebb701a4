"""Extend or fine-tune: `resume RUN --epochs N` continues a run to N epochs in all, and `model.init_from`
starts a new run from a checkpoint's weights. All on the synthetic `smoke` recipe on CPU."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
import yaml

import cifarlab
from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.training import loop
from cifarlab.training.checkpoint import load_checkpoint
from cifarlab.training.optim import Schedule, build_optimizer

COMMON = ["deterministic=true", "train.device=cpu", "train.threads=1", "train.precision=fp32",
          "output.tensorboard=false", "output.progress=none"]
TIMING = {"elapsed_seconds", "images_per_second"}


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _train(root: Path, *extra: str) -> Path:
    assert main(["train", "smoke", f"output.dir={root}", *COMMON, *extra]) == 0
    (run_dir,) = [p for p in (root / "smoke").iterdir() if p.is_dir()]
    return run_dir


def _rows(run_dir: Path, kind: str = "epoch") -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle) if row["kind"] == kind]


def _all_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_extending_a_finished_onecycle_run_holds_the_final_lr_and_records_the_new_total(tmp_path):
    run_dir = _train(tmp_path)  # onecycle over 2 epochs, peak at epoch 1, no annihilation: ends at 0.05 / 10
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


def test_a_step_schedule_extended_equals_a_run_planned_that_long(tmp_path):
    """Per-epoch schedules do not depend on the total: 2 epochs extended to 3 is the 3-epoch run."""
    schedule = ["schedule.name=step", "schedule.step_size=1", "schedule.gamma=0.5"]
    extended = _train(tmp_path / "a", *schedule)
    run = cifarlab.resume(extended, epochs=3)
    reference = _train(tmp_path / "b", *schedule, "train.epochs=3")
    assert run.summary["epochs_completed"] == 3
    assert _rows(extended) == _rows(reference)
    assert _rows(extended, "step") == _rows(reference, "step")
    assert [float(row["lr"]) for row in _rows(extended)] == pytest.approx([0.05, 0.025, 0.0125])
    got, want = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (extended, reference))
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key


def test_cosine_extension_from_python_stays_at_min_lr_and_an_interrupted_extension_resumes(tmp_path, monkeypatch):
    run_dir = _train(tmp_path, "schedule.name=cosine", "schedule.min_lr=0.002")
    assert float(_rows(run_dir)[-1]["lr"]) < 0.05 / 2

    # Stop the extension in its second added epoch, then resume it without --epochs: the total is recorded.
    real_step = loop.train_step

    def stop_at_step_28(state, inputs, labels):
        if state.step + 1 == 28:
            state.stop_reason, state.signal_name, state.signal_number = "interrupted", "SIGINT", 2
        real_step(state, inputs, labels)

    monkeypatch.setattr(loop, "train_step", stop_at_step_28)
    stopped = cifarlab.resume(run_dir, epochs=4)
    assert stopped.summary["status"] == "interrupted"
    monkeypatch.setattr(loop, "train_step", real_step)
    run = cifarlab.resume(run_dir)
    assert run.summary["status"] == "completed" and run.summary["epochs_completed"] == 4

    added = [float(row["lr"]) for row in _all_rows(run_dir) if int(row["epoch"]) > 2]
    assert added and all(lr == pytest.approx(0.002, rel=1e-6) for lr in added)


@pytest.mark.parametrize("epochs", ["2", "1", "0"])
def test_extending_to_no_more_epochs_than_done_is_one_line_and_changes_nothing(tmp_path, capsys, epochs):
    run_dir = _train(tmp_path)
    before = _files(run_dir)
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--epochs", epochs]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cifarlab resume: error: --epochs must be more than the 2 epochs this run has done, got {epochs}"
    assert _files(run_dir) == before


def test_resuming_a_finished_run_without_epochs_points_to_the_extension(tmp_path, capsys):
    run_dir = _train(tmp_path)
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
