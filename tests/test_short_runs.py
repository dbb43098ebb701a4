"""Shortened recipes and runs of very few steps: they run, and say what they changed (issue 18 item 1)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _folders import needs_fashion, write_fashion_folder
from _runs import FAST, SRC
from cifarlab.cli import main
from cifarlab.config import ScheduleConfig
from cifarlab.trainer.optim import Schedule
from cifarlab.trainer.sizing import FEW_STEPS, few_steps_warning

TINY_DATA = ["data.dataset=synthetic", "data.options={num_train: 64, num_test: 32, image_size: 16}"]


def cifarlab(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, in its own process."""
    return subprocess.run([sys.executable, "-m", "cifarlab", *argv], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(SRC)})


@pytest.mark.slow
def test_shortened_recipe_keeps_the_peak_at_its_fraction_and_says_so(tmp_path):
    done = cifarlab("show", "custom-resnet-onecycle", "train.epochs=5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["schedule"]["peak_epoch"] == pytest.approx(5 * 5 / 24)
    assert done.stderr.strip().splitlines() == [
        "note: schedule.peak_epoch moves from 5 of 24 epochs to 1.04 of 5, the same fraction of the run"]


@pytest.mark.slow  # a training run in its own process
def test_the_readme_example_trains_shortened(tmp_path):
    # The README's own example, with the data and the network made tiny so it takes seconds (and an lr
    # given, so no range test): what is checked is that the shortened onecycle schedule is accepted.
    done = cifarlab("train", "custom-resnet-onecycle", "train.epochs=5", "optim.weight_decay=1e-4", *TINY_DATA,
                    "model.name=convnet", "model.options={width: 4}", "schedule.lr_peak=0.01", "train.batch_size=16",
                    f"output.dir={tmp_path}", "output.report=false", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = next((tmp_path / "custom-resnet-onecycle").iterdir())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["schedule"]["peak_epoch"] == pytest.approx(25 / 24)
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 5


@pytest.mark.slow  # a training run in its own process
def test_smoke_for_one_epoch_trains(tmp_path):
    done = cifarlab("train", "smoke", "train.epochs=1", f"output.dir={tmp_path}", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "schedule.peak_epoch moves from 1 of 2 epochs to 0.5 of 1" in done.stderr
    assert json.loads((next((tmp_path / "smoke").iterdir()) / "summary.json").read_text())["status"] == "completed"


def test_a_peak_the_user_sets_stays_an_error_when_impossible(capsys):
    assert main(["show", "smoke", "train.epochs=1", "schedule.peak_epoch=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schedule.peak_epoch must be in (0, train.epochs=1), got 1.0" in err[0]


@needs_fashion
@pytest.mark.slow  # real data decoded, then a run
def test_fmnist_quick_on_32_images_for_one_epoch_runs_and_warns(tmp_path, capsys, monkeypatch):
    # 30 train images at batch 8: 4 steps, where OneCycleLR's warm-up (pct_start 0.25) had zero steps.
    write_fashion_folder(tmp_path / "fm", 3, 2)
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "cache"))
    code = main(["train", "fmnist-quick", "data.dataset=folder", f"data.dir={tmp_path / 'fm'}", "data.options={}",
                 "train.epochs=1", "train.batch_size=8", f"output.dir={tmp_path / 'runs'}", "output.report=false",
                 *FAST])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-2000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning: this run takes only")]
    assert warnings == [few_steps_warning(4, 1)]


@pytest.mark.parametrize("total_steps", range(1, 13))
@pytest.mark.parametrize("pct_start", [0.01, 0.25, 0.3, 0.5, 0.99])
def test_onecycle_of_any_length_has_a_warm_up_and_a_descent(total_steps, pct_start):
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    cfg = ScheduleConfig(name="onecycle", pct_start=pct_start, div_factor=10, final_div_factor=100)
    schedule = Schedule(optimizer, cfg, base_lr=1.0, epochs=1, steps_per_epoch=total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(schedule.lr)
        optimizer.step()
        schedule.after_step()
    assert lrs[0] == pytest.approx(0.1)  # starts at lr_peak / div_factor
    if total_steps >= 3:  # at least one step up to the peak and one step down after it
        peak_step = max(range(total_steps), key=lrs.__getitem__)
        assert 1 <= peak_step < total_steps - 1 and lrs[-1] < lrs[peak_step]


def test_few_steps_warning_names_the_numbers_and_the_fix():
    assert few_steps_warning(4, 6) == (
        f"warning: this run takes only 24 optimizer steps (4 per epoch x 6 epochs); under {FEW_STEPS} rarely "
        "learn anything: lower train.batch_size or raise train.epochs (the folder recipe sizes both to the data)")
    assert few_steps_warning(25, 2) is None


# fast: lookahead from epoch 3 of 10, the whitening bias trained for the first 3 epochs
@pytest.mark.parametrize("overrides, start_epoch, bias_epochs", [
    (["train.epochs=2"], 1, 1),  # kept 3 and 3: no lookahead at all, the bias trained the whole run
    (["train.epochs=1"], 0, 1),
    (["train.epochs=5"], 2, 2),
    (["train.epochs=20"], 6, 6),
    (["train.epochs=10"], 3, 3),
    (["train.epochs=4", "train.lookahead.start_epoch=3"], 3, 1),  # the user's own value is theirs (one past
    # the run is refused: tests/test_adversarial_round4.py)
    (["train.epochs=3", "model.options={widths: [8, 16, 16], whiten_bias_epochs: 3}"], 1, 3),  # the user's own
    # (past the run it is refused: tests/test_adversarial_round5.py)
])
def test_a_shortened_fast_recipe_scales_its_epoch_settings_and_says_so(overrides, start_epoch, bias_epochs, capsys):
    import cifarlab

    cfg = cifarlab.load_config("fast", overrides)
    assert (cfg.train.lookahead.start_epoch, cfg.model.options["whiten_bias_epochs"]) == (start_epoch, bias_epochs)
    notes = [line for line in capsys.readouterr().err.splitlines() if "the same fraction of the run" in line]
    moved = {key: value for key, value in (("train.lookahead.start_epoch", start_epoch),
                                           ("model.options.whiten_bias_epochs", bias_epochs)) if value != 3}
    assert len(notes) == (1 if moved else 0)
    for key, value in moved.items():
        assert f"{key} moves from 3 to {value}" in notes[0]
