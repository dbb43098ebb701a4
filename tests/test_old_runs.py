"""Run directories written by an older cifarlab (tests/fixtures/run_138c3be, made with commit 138c3be) still
load, evaluate and resume: the resumed run ends bit-identical to the same config trained without a stop.

The bit-for-bit comparison with the stored uninterrupted run needs the arithmetic the fixture was made
with (same torch, same CPU kernel family); elsewhere the test still resumes the old run and checks that
every epoch the old code finished is carried over unchanged.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from _compare import TIMING, assert_same_checkpoint, assert_same_state

from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.metrics import read_metrics
from cifarlab.run.summary import read_summary

FIXTURE = Path(__file__).parent / "fixtures" / "run_138c3be"
MADE_WITH = json.loads((FIXTURE / "made_with.json").read_text())
SAME_ARITHMETIC = (MADE_WITH["torch"] == str(torch.__version__)
                   and MADE_WITH["cpu_capability"] == torch.backends.cpu.get_cpu_capability())
# the state the old checkpoints hold (they predate lookahead)
STATE_KEYS = ("model", "optimizer", "schedule", "lr_used", "ema", "epoch", "step", "batch_in_epoch", "history",
              "rng", "epoch_meter", "window_meter", "status")


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


@pytest.fixture
def resumed(tmp_path, capsys):
    run_dir = tmp_path / "interrupted"
    shutil.copytree(FIXTURE / "interrupted", run_dir)
    assert main(["resume", str(run_dir)]) == 0
    # The run was made with output.progress=none, which is quiet: no "resuming ..." line (issue 28 item 7).
    # Where it resumed (epoch 2, batch 3, step 11) shows in the bit-identical result the tests compare.
    assert "resuming" not in capsys.readouterr().err
    return run_dir


def test_an_old_interrupted_run_resumes_and_keeps_what_it_had_done(resumed):
    old = load_checkpoint(FIXTURE / "interrupted" / "checkpoints" / "last.pt")
    new = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert (new["epoch"], new["step"], new["status"]) == (2, 16, "completed")
    assert_same_state(new["history"][0], old["history"][0], "history[0]")
    assert read_summary(resumed).status == "completed"
    assert [row.step for row in read_metrics(resumed)] == [4, 8, 8, 12, 16, 16]


@pytest.mark.skipif(not SAME_ARITHMETIC, reason=f"the fixture's reference was computed with torch "
                    f"{MADE_WITH['torch']} on {MADE_WITH['cpu_capability']} kernels")
def test_an_old_interrupted_run_resumes_bit_identical_to_the_old_uninterrupted_one(resumed):
    reference = FIXTURE / "uninterrupted"
    for name in ("last.pt", "best.pt"):
        assert_same_checkpoint(resumed / "checkpoints" / name, reference / "checkpoints" / name, STATE_KEYS)
    assert _csv_rows(resumed) == _csv_rows(reference)
    now, then = ({k: v for k, v in read_summary(d).to_json().items() if k not in TIMING} for d in (resumed, reference))
    # Every field the old code recorded is the same; the newer code records two more, and says what they are:
    # the precision came from the config's explicit value, and best.pt was picked on the test split (the
    # smoke recipe holds out no validation split).
    assert {k: now[k] for k in then} == then
    assert {k: v for k, v in now.items() if k not in then} == {
        "precision_source": "train.precision=fp32", "selected_on": "test split (optimistic)"}


def test_an_old_best_pt_evaluates_to_its_summary_and_old_records_read(capsys):
    run_dir = FIXTURE / "uninterrupted"
    summary = read_summary(run_dir)
    assert (summary.status, summary.epochs_completed, summary.best_epoch) == ("completed", 2, 2)
    rows = read_metrics(run_dir)
    epochs = [row for row in rows if row.kind == "epoch"]
    assert [row.epoch for row in epochs] == [1, 2] and epochs[-1].test_acc == pytest.approx(
        summary.best_test_acc, abs=1e-6)
    assert main(["eval", str(run_dir / "checkpoints" / "best.pt")]) == 0
    printed = re.search(r"\((\d+\.\d\d)%\)", capsys.readouterr().out).group(1)
    assert printed == f"{100 * summary.best_test_acc:.2f}"


def test_a_checkpoint_saves_and_restores_exactly_the_keys_the_format_defines():
    from cifarlab.run.checkpoint import Checkpoint
    from cifarlab.trainer.checkpoint import SAVED_KEYS

    assert SAVED_KEYS == Checkpoint.saved_keys()  # the same keys, in the same (file) order
    for run in ("interrupted", "uninterrupted"):
        for name in ("last.pt", "best.pt"):
            payload = load_checkpoint(FIXTURE / run / "checkpoints" / name)
            assert set(payload) <= set(Checkpoint.model_fields)
            # read and written again, a checkpoint holds the same keys and the same objects
            again = Checkpoint.check(payload, name).to_payload()
            assert list(again) == [key for key in Checkpoint.model_fields if key in payload]
            assert all(again[key] is payload[key] for key in payload)


def test_a_checkpoint_with_a_key_cifarlab_does_not_know_is_refused(tmp_path, capsys):
    from cifarlab.run.checkpoint import save_checkpoint

    payload = load_checkpoint(FIXTURE / "uninterrupted" / "checkpoints" / "best.pt")
    payload["surprise"] = 1
    save_checkpoint(payload, tmp_path / "odd.pt")
    assert main(["eval", str(tmp_path / "odd.pt")]) == 2
    assert "surprise" in capsys.readouterr().err
