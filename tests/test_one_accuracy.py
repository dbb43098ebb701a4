"""One checkpoint, one accuracy: `eval`, `report` and summary.json agree on best.pt, and a finished run's
checkpoints and summary say the same status and learning rate."""
from __future__ import annotations

import json
import re

import pytest

from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint

COMMON = ["train.device=cpu", "train.threads=1", "output.tensorboard=false", "output.progress=none",
          "train.epochs=3", "data.options={num_train: 512, num_test: 300, image_size: 16}"]


def _run(tmp_path, *extra):
    assert main(["train", "smoke", f"output.dir={tmp_path}", *COMMON, *extra]) == 0
    (run_dir,) = (tmp_path / "smoke").iterdir()
    return run_dir


# One accuracy per checkpoint in either precision (bf16 autocast runs on any x86 CPU, emulated without AVX512-BF16).
@pytest.mark.slow  # three trainings with reports, one in emulated bf16
@pytest.mark.parametrize("variant", [["train.tta=true", "train.ema=0.9", "train.precision=fp32"],
                                     ["train.tta=false", "train.precision=fp32"],
                                     ["train.tta=true", "train.precision=bf16"]],
                         ids=["fp32-tta-ema", "fp32", "bf16-tta"])
def test_eval_and_report_of_best_pt_equal_the_summary(tmp_path, capsys, variant):
    run_dir = _run(tmp_path, "output.report=true", *variant)
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoints" / "best.pt")]) == 0
    out = capsys.readouterr().out
    printed = re.search(r"\((\d+\.\d\d)%\)", out).group(1)
    assert printed == f"{100 * summary['best_test_acc']:.2f}"
    result = json.loads(out.splitlines()[-1])
    assert result["tta"] == summary["tta"] and result["precision"] == summary["precision"]
    report = (run_dir / "report.md").read_text()
    assert f"scores {100 * summary['best_test_acc']:.2f}%" in report


def test_tta_flag_overrides_the_checkpoint(tmp_path, capsys):
    run_dir = _run(tmp_path, "train.tta=false")
    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoints" / "best.pt"), "--tta"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["tta"] == "flip"


def test_a_finished_run_says_so_everywhere_and_records_its_lr_peak(tmp_path):
    run_dir = _run(tmp_path, "schedule.lr_peak=0.08")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["status"] == "completed", name
    assert (summary["lr_peak"], summary["lr_peak_source"]) == (0.08, "schedule.lr_peak")


def test_lr_peak_from_optim_lr_is_recorded_too(tmp_path):
    run_dir = _run(tmp_path, "schedule.name=step", "schedule.step_size=1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["lr_peak"], summary["lr_peak_source"]) == (0.05, "optim.lr")
