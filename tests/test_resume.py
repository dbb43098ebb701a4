"""Exact resume: a run stopped (signal, SIGKILL) and resumed ends bit-identical to an uninterrupted one.

All on the synthetic `smoke` recipe on CPU with `deterministic: true` and one thread. Timing columns
(elapsed_seconds, images_per_second, wall/train seconds) naturally differ and are left out of the
comparison; everything else — metrics.csv rows, summary.json, model/optimizer/schedule/EMA/RNG state
in best.pt and last.pt — must be identical.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _compare import TIMING, assert_same_checkpoint, assert_same_state
from test_user_models import user_module  # noqa: F401  (a fixture)

from _runs import AtStep, signal_at_step, train_cli_exit
from cifarlab.cli import main
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.metrics import EpochRow

SRC = Path(__file__).resolve().parents[1] / "src"
# Only a guard against a process that hangs before its first checkpoint (a dead process fails at once): on a
# loaded 2-core machine importing torch and training 3 steps took over 60 s, and the test failed on wall time.
STARTUP_GUARD_SECONDS = 600
# 8 steps per epoch (512 images, batch 64); a window row every 4 steps; last.pt every 3 steps and per epoch.
COMMON = ["deterministic=true", "train.device=cpu", "train.threads=1", "train.precision=fp32",
          "output.tensorboard=false", "output.progress=lines", "checkpoint.every_steps=3"]


def _args(root: Path, *extra: str) -> list[str]:
    return ["smoke", f"output.dir={root}", *COMMON, *extra]


def _only_run(root: Path) -> Path:
    (run_dir,) = [p for p in (root / "smoke").iterdir() if p.is_dir()]
    return run_dir


def _train(root: Path, *extra: str) -> Path:
    assert main(["train", *_args(root, *extra)]) == 0
    return _only_run(root)


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMING}


def _assert_same_run(resumed: Path, reference: Path) -> None:
    assert _metrics(resumed) == _metrics(reference)
    assert _summary(resumed) == _summary(reference)
    for name in ("last.pt", "best.pt"):
        got, want = (load_checkpoint(d / "checkpoints" / name) for d in (resumed, reference))
        assert_same_checkpoint(got, want, where=name)
        assert_same_state(got["config"], want["config"], f"{name}:config", skip={"output"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted 3-epoch runs: plain, with an EMA of the weights, with lookahead."""
    def run(*extra):
        root = tmp_path_factory.mktemp("reference")
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        try:
            return _train(root, "train.epochs=3", *extra)
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)

    return {"plain": run(), "ema": run("train.ema=0.9"),
            "lookahead": run("train.lookahead={every: 3, start_epoch: 1, power: 1}")}


@pytest.mark.parametrize("stop_step, variant", [(8, "plain"), (13, "plain"), (11, "ema"), (14, "lookahead")],
                         ids=["between-epochs", "mid-epoch", "mid-epoch-ema", "mid-epoch-lookahead"])
def test_signal_then_resume_equals_uninterrupted(tmp_path, capsys, reference, stop_step, variant):
    extra = {"plain": (), "ema": ("train.ema=0.9",),
             "lookahead": ("train.lookahead={every: 3, start_epoch: 1, power: 1}",)}[variant]
    recipe, *overrides = _args(tmp_path, "train.epochs=3", *extra)
    assert train_cli_exit(recipe, overrides, [signal_at_step(stop_step)]) == 130
    run_dir = _only_run(tmp_path)
    err = capsys.readouterr().err
    assert f"Resume with: cifarlab resume {run_dir}" in err and "SIGINT" in err
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (stopped["step"], stopped["status"]) == (stop_step, "interrupted")
    assert stopped["batch_in_epoch"] == stop_step % 8 and stopped["epoch"] == stop_step // 8
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["last_good_checkpoint"].endswith("last.pt")

    assert main(["resume", str(run_dir)]) == 0
    assert f"resuming {run_dir} at epoch {stop_step // 8 + 1}, batch {stop_step % 8}" in capsys.readouterr().err
    _assert_same_run(run_dir, reference[variant])


@pytest.mark.slow  # kills a training subprocess, then resumes
def test_resume_after_sigkill_and_torn_metrics_equals_uninterrupted(tmp_path, reference, capsys):
    """Kill -9 a real training process mid-run, resume it, compare with the uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "cifarlab", "train", *_args(tmp_path, "train.epochs=3")]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + STARTUP_GUARD_SECONDS
        while not list(tmp_path.glob("smoke/*/checkpoints/last.pt")):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    run_dir = _only_run(tmp_path)
    killed_at = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 0 < killed_at["step"] < 24 and killed_at["status"] == "running"
    with open(run_dir / "metrics.csv", "a") as handle:  # a kill in the middle of a row
        handle.write("step,2,99,0.0")

    assert main(["resume", str(run_dir)]) == 0
    capsys.readouterr()
    _assert_same_run(run_dir, reference["plain"])


@pytest.mark.slow  # signals a training subprocess, then resumes
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_to_a_real_process_saves_hints_and_resumes_exactly(tmp_path, reference, capsys, signum):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "cifarlab", "train", *_args(tmp_path, "train.epochs=3")]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + STARTUP_GUARD_SECONDS
        while not list(tmp_path.glob("smoke/*/checkpoints/last.pt")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    run_dir = _only_run(tmp_path)
    assert process.returncode == 128 + signum, err
    assert f"Resume with: cifarlab resume {run_dir}" in err and "Traceback" not in err
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert stopped["status"] == "interrupted" and 0 < stopped["step"] < 24

    assert main(["resume", str(run_dir)]) == 0
    capsys.readouterr()
    _assert_same_run(run_dir, reference["plain"])


def test_resume_falls_back_to_previous_checkpoint_when_last_is_corrupt(tmp_path, reference, capsys):
    """Stop at step 20, corrupt last.pt: resume warns, takes last.prev.pt (step 18), drops the metrics.csv
    row and TensorBoard events of step 20, and still ends identical to the uninterrupted run."""
    recipe, *overrides = _args(tmp_path, "train.epochs=3", "output.tensorboard=true")
    assert train_cli_exit(recipe, overrides, [signal_at_step(20)]) == 130
    run_dir = _only_run(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flipped bits in the middle: torch.load may not notice, the sha256 does
    last.write_bytes(bytes(data))
    assert load_checkpoint(run_dir / "checkpoints" / "last.prev.pt")["step"] == 18
    assert any(row["step"] == "20" for row in _metrics(run_dir))

    assert main(["resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "sha256 does not match" in err and "last.prev.pt" in err and "at epoch 3, batch 2 (step 18)" in err
    _assert_same_run(run_dir, reference["plain"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb")).Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["step/train_loss"] == steps["step/lr"] == [4, 8, 12, 16, 20, 24]
    assert steps["epoch/test_acc"] == steps["epoch/epoch"] == [8, 16, 24]


def test_divergence_stops_keeps_last_good_checkpoint_and_exits_3(tmp_path, capsys):
    """Weights blow up at step 11 (after the step-9 save): last.pt stays the step-9 state, marked in summary.json."""
    def blow_up(state):  # as step 10 ends: step 11 trains on infinite weights
        with torch.no_grad():
            next(state.objects.model.parameters()).fill_(float("inf"))

    recipe, *overrides = _args(tmp_path, "train.epochs=3")
    assert train_cli_exit(recipe, overrides, [AtStep(10, blow_up)]) == 3
    run_dir = _only_run(tmp_path)
    err = capsys.readouterr().err
    assert "training diverged: non-finite loss at step 11 with lr" in err and "cifarlab lr-find smoke" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"]["step"] == 11
    assert summary["last_good_checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 9 and all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == 1
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert main(["resume", str(run_dir)]) == 2
    assert "diverged" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_huge_learning_rate_really_diverges_and_names_step_and_lr(tmp_path, capsys):
    assert main(["train", *_args(tmp_path, "optim.lr=1e6")]) == 3
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("training diverged"))
    assert "non-finite loss at step" in line and "with lr" in line and "lr-find" in line
    assert "no checkpoint was written before it" in line
    summary = json.loads((_only_run(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["last_good_checkpoint"] is None


@pytest.mark.parametrize("name, extra", [
    ("onecycle", {}), ("cosine", {"warmup_epochs": 1}), ("step", {"step_size": 1}),
    ("multistep", {"milestones": [1, 2]}), ("plateau", {"patience": 0}),
])
def test_schedule_state_round_trips_through_a_checkpoint_file(tmp_path, name, extra):
    from cifarlab.config import ScheduleConfig
    from cifarlab.run.checkpoint import save_checkpoint
    from cifarlab.trainer.optim import Schedule

    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        return opt, Schedule(opt, ScheduleConfig(name=name, **extra), 0.1, epochs=4, steps_per_epoch=5)

    def advance(schedule, steps, start=0):
        lrs = []
        for k in range(start, start + steps):
            schedule.optimizer.step()
            schedule.after_step()
            if (k + 1) % 5 == 0:
                schedule.after_epoch(EpochRow(test_loss=1.0))  # a plateau: ReduceLROnPlateau must count it
            lrs.append(schedule.lr)
        return lrs

    _, a = fresh()
    full = advance(a, 20)
    opt_b, b = fresh()
    advance(b, 7)
    save_checkpoint({"optimizer": opt_b.state_dict(), "schedule": b.state_dict()}, tmp_path / "s.pt")
    blob = torch.load(tmp_path / "s.pt", weights_only=True)  # a plain torch.load ignores the sha256 trailer
    opt_c, c = fresh()
    opt_c.load_state_dict(blob["optimizer"])
    c.load_state_dict(blob["schedule"])
    assert advance(c, 13, start=7) == full[7:]


def test_a_resume_in_the_same_second_and_process_writes_events_tensorboard_reads_after_the_first(tmp_path):
    """TensorBoard reads a log folder's event files in name order, and a name is
    `events.out.tfevents.<second>.<host>.<pid>.<n>` with n counting writers in the process: a notebook that
    resumes within the second its 10th writer started wrote `....10`, which sorts before `....9`, so the
    resumed steps came first ([20, 24, 4, 8, ...]). The resumed file must sort after the earlier one."""
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer import event_file_writer
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  imported now, not inside the second

    from cifarlab.trainer.writers.tensorboard_logger import TensorBoard

    def log(steps, start):
        writer = TensorBoard(tmp_path / "tb")
        writer.on_fit_start(SimpleNamespace(progress=SimpleNamespace(step=start)))
        for step in steps:
            window = EpochRow(step=step, train_loss=1.0 / step, kind="step")
            writer.on_window(SimpleNamespace(process=SimpleNamespace(window=window)))
        writer.writer.close()

    while event_file_writer._global_uid._value % 10 != 9:  # the next writer is the 9th, 19th, ...: n gains a digit
        event_file_writer._global_uid.get()
    while time.time() % 1 > 0.5:  # both writers start within one second
        time.sleep(0.05)
    log([4, 8, 12, 16, 20], start=0)
    log([20, 24], start=18)  # resumed from step 18: TensorBoard purges the first file's step 20
    names = sorted(path.name for path in (tmp_path / "tb").iterdir())
    assert len(names) == 2
    events = EventAccumulator(str(tmp_path / "tb")).Reload()  # reads the files as TensorBoard does
    assert [e.step for e in events.Scalars("step/train_loss")] == [4, 8, 12, 16, 20, 24]


# ------------------------------------------------------------------ the run's own model module

def _forget(module: str, model: str) -> None:
    """As in a fresh process: the module not imported, its model not registered."""
    from cifarlab.models.registry import MODELS

    MODELS._entries.pop(model, None)
    sys.modules.pop(module, None)


def test_resume_imports_the_model_module_the_run_was_trained_with(tmp_path, capsys, request):
    """`train` imported the recipe's model.module; training the run on imports it again (a killed sweep's
    trial is resumed so), with `train`'s checks: a module that is gone is one line and nothing changes."""
    from test_user_models import MODULE

    from _runs import tree_hashes

    user_folder = request.getfixturevalue("user_module")  # the module's folder, on sys.path
    recipe, *overrides = _args(tmp_path, "model.name=tiny_mlp", f"model.module={MODULE}", "model.options={hidden: 8}",
                               "train.epochs=2")
    assert train_cli_exit(recipe, overrides, [signal_at_step(5)]) == 130
    run_dir = _only_run(tmp_path)
    capsys.readouterr()
    _forget(MODULE, "tiny_mlp")
    (user_folder / f"{MODULE}.py").rename(user_folder / "elsewhere.py")
    before = tree_hashes(run_dir)
    assert main(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cifarlab resume: error: cannot import model module {MODULE!r}: no module named {MODULE!r} "
                   f"(install it, or put its folder on PYTHONPATH)"]
    assert tree_hashes(run_dir) == before
    (user_folder / "elsewhere.py").rename(user_folder / f"{MODULE}.py")
    assert main(["resume", str(run_dir)]) == 0  # no --import: the run names its module
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_resume_imports_no_module_its_model_does_not_need(tmp_path, monkeypatch, capsys, shared_runs):
    """A run whose model is built in but whose config names a module (an edited or foreign run) resumes
    without importing it: a run directory is never a reason to run code its model does not need."""
    from _runs import finished_and_open_runs, tampered_copy

    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "cifarlab_planted_module.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(planted))
    done = finished_and_open_runs(tmp_path / "runs", shared_runs)["done"]
    run = tampered_copy(done, tmp_path / "r", lambda p: p["config"]["model"].update(module="cifarlab_planted_module"))
    assert main(["resume", str(run), "--epochs", "2"]) == 0
    assert not (tmp_path / "ran").exists() and "cifarlab_planted_module" not in sys.modules
