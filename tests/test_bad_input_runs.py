"""Bad input, round 2 (issue 11, classes 3-7): CLI arguments outside the config, paths, checkpoint
contents, concurrency and the end-of-run window. Every case: ONE line on stderr naming the problem and
what is allowed, exit code 2, no traceback, and every file already there keeps its sha256.

Each case is (id, how to set it up, the CLI arguments, words the message must contain); the CLI runs
in-process (`cifarlab.cli.main`) on the synthetic `smoke` recipe. Checkpoints with wrong contents are
written with `save_checkpoint`, so their sha256 trailer is valid: only the contents are wrong. Kills and
concurrency use real processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _runs import assert_refused, finished_and_open_runs, tampered_copy
from cifarlab.cli import main
from cifarlab.data import prepare
from cifarlab.run import layout, lock
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.use.evaluate import evaluation_data_config

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["train.threads=1", "output.tensorboard=false", "output.progress=none"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_runs):
    """A finished 1-epoch smoke run, and a 2-epoch one put back to its step-15 checkpoint (resumable)."""
    return finished_and_open_runs(tmp_path_factory.mktemp("runs"), shared_runs)


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def _set(key, value):
    def change(payload):
        payload[key] = value

    return change


def _set_rng(key, value):
    def change(payload):
        payload["rng"][key] = value

    return change


def _history_row(key, value):
    def change(payload):
        payload["history"][0][key] = value

    return change


def _config(section, key, value):
    def change(payload):
        payload["config"][section][key] = value

    return change


def _drop_history_key(payload):
    del payload["history"][0]["test_acc"]


def _duplicate_key_config(run_dir: Path, dest: Path) -> Path:
    """A copy of a run whose config.yaml names `seed` twice (which value would a comparison show?)."""
    run = _copy(run_dir, dest)
    with (run / "config.yaml").open("a") as handle:
        handle.write("seed: 7\nseed: 8\n")
    return run


def _file(path: Path, text: str = "already here\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    _file(path / "keep.txt")
    return path


def _image(tmp: Path) -> Path:
    path = tmp / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.pt"
    os.mkfifo(path)
    return path


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _ckpt(run_dir: Path, name: str = "best.pt") -> str:
    return str(run_dir / "checkpoints" / name)


def _plots_is_a_file(run_dir: Path, dest: Path) -> Path:
    copy = _copy(run_dir, dest)
    _file(copy / "plots", "not a folder\n")
    return copy


def _outside_run(run_dir: Path, tmp: Path) -> Path:
    path = tmp / "loose" / "model.pt"
    path.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "best.pt", path)
    return path


def _env(monkeypatch, name: str, value: str, argv: list[str]) -> list[str]:
    monkeypatch.setenv(name, value)
    return argv


DONE, OPEN = "done", "open"
# (id, setup(tmp, runs, monkeypatch) -> argv, words the message must contain)
CASES = [
    # 3. CLI arguments outside the config
    (
        "gradcam-count-negative",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--count", "-3", "--out", str(t / "g.png")],
        ["--count must be in 1..100", "-3"],
    ),
    (
        "gradcam-count-zero",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--count", "0", "--out", str(t / "g.png")],
        ["--count must be in 1..100", "0"],
    ),
    (
        "gradcam-count-huge",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--count", "100000", "--out", str(t / "g.png")],
        ["--count must be in 1..100", "100000"],
    ),
    (
        "gradcam-images-empty-item",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "1,,2", "--out", str(t / "g.png")],
        ["--images '1,,2' has an empty item", "misclassified"],
    ),
    (
        "gradcam-images-trailing-comma",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "3,", "--out", str(t / "g.png")],
        ["--images '3,' has an empty item"],
    ),
    (
        "gradcam-images-only-commas",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", ",", "--out", str(t / "g.png")],
        ["has an empty item"],
    ),
    (
        "gradcam-images-mixed",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "1,cat.png", "--out", str(t / "g.png")],
        ["mixes test indices and file names"],
    ),
    (
        "gradcam-images-out-of-range",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "0,256", "--out", str(t / "g.png")],
        ["--images indices must be in 0..255", "0,256"],
    ),
    (
        "gradcam-images-negative",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "-1", "--out", str(t / "g.png")],
        ["--images indices must be in 0..255", "-1"],
    ),
    (
        "predict-top-zero",
        lambda t, r, m: ["predict", _ckpt(r[DONE]), str(_image(t)), "--top", "0"],
        ["--top must be at least 1 (a whole number), got 0"],
    ),
    (
        "predict-top-negative",
        lambda t, r, m: ["predict", _ckpt(r[DONE]), str(_image(t)), "--top", "-1"],
        ["--top must be at least 1 (a whole number), got -1"],
    ),
    (
        "summary-batch-size-text",
        lambda t, r, m: ["summary", "convnet", "batch_size=abc"],
        ["batch_size='abc'", "1..1024"],
    ),
    ("summary-batch-size-zero", lambda t, r, m: ["summary", "convnet", "batch_size=0"], ["batch_size=0", "1..1024"]),
    (
        "summary-batch-size-float",
        lambda t, r, m: ["summary", "convnet", "batch_size=2.5"],
        ["batch_size=2.5", "whole number"],
    ),
    (
        "summary-batch-size-bool",
        lambda t, r, m: ["summary", "convnet", "batch_size=true"],
        ["batch_size=True", "whole number"],
    ),
    (
        "summary-option-wrong-type",
        lambda t, r, m: ["summary", "convnet", "width=abc"],
        ["'convnet' cannot be built", "width='abc'"],
    ),
    ("summary-unknown-option", lambda t, r, m: ["summary", "convnet", "depth=3"], ["convnet", "no option(s) depth"]),
    (
        "summary-unknown-dataset",
        lambda t, r, m: ["summary", "convnet", "dataset=imagenet"],
        ["unknown dataset 'imagenet'"],
    ),
    (
        "summary-dataset-not-a-name",
        lambda t, r, m: ["summary", "convnet", "dataset=[1, 2]"],
        ["dataset=[1, 2]", "dataset name"],
    ),
    (
        "summary-unknown-model",
        lambda t, r, m: ["summary", "resnet9000", "batch_size=abc"],
        ["unknown model 'resnet9000'"],
    ),
    (
        "gradcam-out-existing-file",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "0", "--out", str(_file(t / "g.png"))],
        ["g.png already exists (a file)", "nothing is overwritten"],
    ),
    (
        "gradcam-out-existing-folder",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "0", "--out", str(_folder(t / "pics"))],
        ["pics already exists (a folder)"],
    ),
    (
        "gradcam-out-under-a-file",
        lambda t, r, m: ["gradcam", _ckpt(r[DONE]), "--images", "0", "--out", str(_file(t / "f") / "g.png")],
        ["cannot be written", "is a file, not a folder"],
    ),
    (
        "compare-config-duplicate-key",
        lambda t, r, m: ["compare", str(_duplicate_key_config(r[DONE], t / "x")), "--out", str(t / "cmp")],
        ["config.yaml' is not valid YAML"],
    ),
    (
        "compare-out-is-a-file",
        lambda t, r, m: ["compare", str(r[DONE]), "--out", str(_file(t / "cmp"))],
        ["cmp is a file", "folder"],
    ),
    (
        "lr-find-out-is-a-file",
        lambda t, r, m: ["lr-find", "smoke", "--out", str(_file(t / "lr"))],
        ["lr is a file", "folder"],
    ),
    ("eval-dev-zero", lambda t, r, m: ["eval", "/dev/zero"], ["/dev/zero is not a regular file", ".pt file"]),
    (
        "predict-dev-urandom",
        lambda t, r, m: ["predict", "/dev/urandom", str(_image(t))],
        ["/dev/urandom is not a regular file"],
    ),
    ("eval-fifo", lambda t, r, m: ["eval", str(_fifo(t))], ["pipe.pt is not a regular file"]),
    (
        "eval-link-to-a-device",
        lambda t, r, m: ["eval", str(_link(t / "best.pt", "/dev/zero"))],
        ["best.pt is not a regular file"],
    ),
    (
        "eval-over-the-size-limit",
        lambda t, r, m: _env(m, "CIFARLAB_MAX_CHECKPOINT_BYTES", "1000", ["eval", _ckpt(r[DONE])]),
        ["over the 1,000-byte limit", "CIFARLAB_MAX_CHECKPOINT_BYTES"],
    ),
    (
        "eval-size-limit-not-a-number",
        lambda t, r, m: _env(m, "CIFARLAB_MAX_CHECKPOINT_BYTES", "lots", ["eval", _ckpt(r[DONE])]),
        ["CIFARLAB_MAX_CHECKPOINT_BYTES must be a positive whole number", "'lots'"],
    ),
    (
        "resume-over-the-size-limit",
        lambda t, r, m: _env(m, "CIFARLAB_MAX_CHECKPOINT_BYTES", "1000", ["resume", str(_copy(r[OPEN], t / "x"))]),
        ["over the 1,000-byte limit"],
    ),
    # 4. paths
    (
        "train-name-climbing-out",
        lambda t, r, m: ["train", "smoke", "name=../../x", f"output.dir={t / 'a' / 'b'}", *FAST],
        ["name='../../x'", "inside output.dir"],
    ),
    (
        "train-name-absolute",
        lambda t, r, m: ["train", "smoke", f"name={t / 'abs'}", f"output.dir={t / 'a'}", *FAST],
        ["must be one folder name", "'/'"],
    ),
    (
        "train-name-dot-dot",
        lambda t, r, m: ["train", "smoke", "name=..", f"output.dir={t / 'a'}", *FAST],
        ["name='..'"],
    ),
    (
        "train-name-backslash",
        lambda t, r, m: ["train", "smoke", "name=a\\b", f"output.dir={t / 'a'}", *FAST],
        ["must be one folder name"],
    ),
    (
        "lr-find-name-climbing-out",
        lambda t, r, m: ["lr-find", "smoke", "name=../x", f"output.dir={t / 'a'}"],
        ["name='../x'"],
    ),
    (
        "data-dir-under-a-file",
        lambda t, r, m: [
            "train",
            "smoke",
            "data.dataset=cifar10",
            "data.options={}",
            f"data.dir={_file(t / 'f')}/sub/deeper",
            f"output.dir={t / 'runs'}",
            *FAST,
        ],
        ["data directory", "cannot be created", "is a file, not a directory"],
    ),
    (
        "data-env-under-a-file",
        lambda t, r, m: _env(
            m,
            "CIFARLAB_DATA",
            f"{_file(t / 'f')}/sub",
            ["train", "smoke", "data.dataset=cifar10", "data.options={}", f"output.dir={t / 'runs'}", *FAST],
        ),
        ["cannot be created", "is a file, not a directory"],
    ),
    (
        "report-plots-is-a-file",
        lambda t, r, m: ["report", str(_plots_is_a_file(r[DONE], t / "x"))],
        ["cannot write the report", "plots is a file, not a folder"],
    ),
    (
        "gradcam-default-out-plots-is-a-file",
        lambda t, r, m: ["gradcam", _ckpt(_plots_is_a_file(r[DONE], t / "x")), "--images", "0"],
        ["plots is a file", "folder"],
    ),
    (
        "gradcam-checkpoint-outside-a-run",
        lambda t, r, m: ["gradcam", str(_outside_run(r[DONE], t)), "--images", "0"],
        ["model.pt is not inside a run directory", "--out"],
    ),
    # 5. checkpoint contents (valid trailer, wrong contents)
    (
        "eval-mean-strings",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("mean", ["a", "b", "c"])))],
        ["not usable", "mean must be a list of 1 to 4 finite numbers"],
    ),
    (
        "eval-std-zero",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("std", [0.0, 0.2, 0.2])))],
        ["std must be positive", "[0.0, 0.2, 0.2]"],
    ),
    (
        "eval-std-nan",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("std", [float("nan")] * 3)))],
        ["std must be a list of 1 to 4 finite numbers"],
    ),
    (
        "predict-mean-fewer-channels",
        lambda t, r, m: ["predict", _ckpt(tampered_copy(r[DONE], t / "x", _set("mean", [0.5, 0.5]))), str(_image(t))],
        ["mean must be 3 values, one per channel, got [0.5, 0.5]"],  # the list that is wrong (was: blamed std)
    ),
    (
        "predict-classes-not-strings",
        lambda t, r, m: [
            "predict",
            _ckpt(tampered_copy(r[DONE], t / "x", _set("classes", list(range(10))))),
            str(_image(t)),
        ],
        ["classes must be a list of distinct class names"],
    ),
    (
        "eval-history-not-a-list",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("history", "bogus")))],
        ["history must be a list of 1 rows"],
    ),
    (
        "eval-history-row-missing-key",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _drop_history_key))],
        ["history row 1 must be a mapping with", "test_acc"],
    ),
    (
        "eval-history-text-accuracy",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _history_row("test_acc", "high")))],
        ["history row 1 must be numbers only"],
    ),
    (
        "eval-status-unknown",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("status", "great")))],
        ["status must be one of running, completed, interrupted, diverged", "'great'"],
    ),
    (
        "eval-image-size-negative",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("image_size", -16)))],
        ["image_size must be a whole number in 1..4096"],
    ),
    (
        "eval-config-not-a-mapping",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _set("config", "oops")))],
        ["config must be a mapping"],
    ),
    (
        "eval-config-invalid",
        lambda t, r, m: ["eval", _ckpt(tampered_copy(r[DONE], t / "x", _config("train", "epochs", -1)))],
        ["has an invalid config", "train.epochs"],
    ),
    (
        "report-epoch-negative",
        lambda t, r, m: ["report", str(tampered_copy(r[DONE], t / "x", _set("epoch", -5)))],
        ["epoch must be a whole number in 0..1", "-5"],
    ),
    (
        "export-model-not-tensors",
        lambda t, r, m: [
            "export",
            _ckpt(tampered_copy(r[DONE], t / "x", _set("model", {"w": "x"}))),
            "--format",
            "safetensors",
            "--out",
            str(t / "net.safetensors"),
        ],
        ["model must be a mapping of names to tensors", "w: str"],
    ),
    (
        "resume-epoch-negative",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("epoch", -5)))],
        ["epoch must be a whole number in 0..2", "-5"],
    ),
    (
        "resume-epoch-beyond-the-run",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("epoch", 7)))],
        ["epoch must be a whole number in 0..2", "7"],
    ),
    (
        "resume-batch-in-epoch-huge",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("batch_in_epoch", 10**6)))],
        ["batch_in_epoch must be a whole number in 0..step (15)", "1000000"],
    ),
    (
        "resume-batch-beyond-the-epoch",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("batch_in_epoch", 9)))],
        ["batch_in_epoch must be in 0..7", "8 batches per epoch"],
    ),
    (
        "resume-step-negative",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("step", -1)))],
        ["step must be a whole number"],
    ),
    (
        "resume-step-bool",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("epoch", True)))],
        ["epoch must be a whole number"],
    ),
    (
        "resume-rng-5-bytes",
        lambda t, r, m: [
            "resume",
            str(tampered_copy(r[OPEN], t / "x", _set_rng("torch", torch.zeros(5, dtype=torch.uint8)))),
        ],
        ["rng.torch must be a uint8 tensor of", "5 values"],
    ),
    (
        "resume-rng-python-short",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set_rng("python", [1, 2, 3])))],
        ["rng.python must be 625 whole numbers", "3 values"],
    ),
    (
        "resume-rng-numpy-floats",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set_rng("numpy", torch.zeros(624))))],
        ["rng.numpy must be 624 whole numbers"],
    ),
    (
        "resume-rng-missing",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("rng", "none")))],
        ["rng must be a mapping"],
    ),
    (
        "resume-history-bogus",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("history", [{"epoch": 1}])))],
        ["history row 1 must be a mapping with epoch, step, lr"],
    ),
    (
        "resume-history-too-long",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x",
                                                     lambda p: p["history"].append(p["history"][0])))],
        ["history must be a list of 1 rows", "2 rows"],
    ),
    (
        "resume-status-unknown",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("status", "paused")))],
        ["status must be one of"],
    ),
    (
        "resume-meter-wrong-shape",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("epoch_meter", torch.zeros(5))))],
        ["epoch_meter must be a float64 tensor of 3 sums"],
    ),
    (
        "resume-lookahead-not-tensors",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("lookahead", {"slow": ["w"]})))],
        ["lookahead must be null or {slow: null or a list of tensors}"],
    ),
    (
        "resume-meter-counts-impossible",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set(
            "window_meter", torch.tensor([1.0, 9.0, 4.0], dtype=torch.float64))))],
        ["window_meter must be sums (loss, correct, images) with whole counts", "[1.0, 9.0, 4.0]"],
    ),
    (
        "resume-optimizer-not-a-state",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("optimizer", "sgd")))],
        ["optimizer must be an optimizer state_dict"],
    ),
    (
        "resume-without-rng",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", lambda p: p.pop("rng")))],
        ["a resumable checkpoint must be complete", "got 'no rng'"],
    ),
    (
        "resume-elapsed-negative",
        lambda t, r, m: ["resume", str(tampered_copy(r[OPEN], t / "x", _set("elapsed_seconds", -3.0)))],
        ["elapsed_seconds must be a finite number >= 0"],
    ),
]


def test_the_table_covers_every_class():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


# Cases that, were their fix lost, would read until memory runs out (a device) or block (a FIFO opened for
# reading): real processes under a memory and time limit, so that a regression fails the test, not the machine.
IN_A_PROCESS = {"eval-dev-zero", "predict-dev-urandom", "eval-fifo", "eval-link-to-a-device"}


# A case in its own process pays torch's import (seconds): marked slow, with any other case over ~2 s.
SLOW = IN_A_PROCESS


@pytest.mark.parametrize("case", [pytest.param(case, id=case[0], marks=[pytest.mark.slow] * (case[0] in SLOW))
                                  for case in CASES])
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case, tmp_path, runs, monkeypatch, capsys):
    name, setup, words = case
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, runs, monkeypatch)
    assert_refused(argv, words, {**runs, "tmp": tmp_path}, capsys, tmp_path, name in IN_A_PROCESS)
    assert not (tmp_path / "x" / "plots").is_dir()  # nor a report or plot of a refused run


# ---------------------------------------------------------------- 4. where output goes


@pytest.mark.slow
def test_gradcam_without_out_writes_to_the_real_run_however_the_path_is_spelled(runs, tmp_path, monkeypatch, capsys):
    run = _copy(runs[DONE], tmp_path / "run")
    (tmp_path / "link.pt").symlink_to(run / "checkpoints" / "best.pt")
    target = run / "plots" / "gradcam-best.png"
    spellings = [
        ("link", str(tmp_path / "link.pt")),
        ("bare", "best.pt"),
        ("dotted", str(run / "checkpoints" / ".." / "checkpoints" / "best.pt")),
    ]
    for name, spelled in spellings:
        monkeypatch.chdir(run / "checkpoints" if name == "bare" else tmp_path)
        assert main(["gradcam", spelled, "--images", "0,1"]) == 0, capsys.readouterr().err
        # printed relative to the working folder when below it, else whole
        shown = str(target.resolve()) if name == "bare" else "run/plots/gradcam-best.png"
        assert capsys.readouterr().out.strip() == shown
        assert target.is_file()
        target.unlink()
    assert not (run / "checkpoints" / "plots").exists() and not (tmp_path / "plots").exists()


@pytest.mark.slow  # eval twice and a report
def test_eval_never_writes_where_the_checkpoint_config_points(runs, tmp_path, monkeypatch, capsys):
    """data.dir in a checkpoint is someone else's path: eval looks up datasets under the user's folder."""
    elsewhere = tmp_path / "not-yours"
    run = tampered_copy(runs[DONE], tmp_path / "run", _config("data", "dir", str(elsewhere)))
    asked = []
    real_load = prepare.load_dataset

    def load_dataset(name, data_dir=None, **kw):
        asked.append(data_dir)
        return real_load(name, data_dir, **kw)

    monkeypatch.setattr(prepare, "load_dataset", load_dataset)
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "mine"))
    assert main(["eval", _ckpt(run)]) == 0
    assert main(["eval", _ckpt(run), "--data-dir", str(tmp_path / "chosen")]) == 0
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert asked == [None, str(tmp_path / "chosen"), None] and not elsewhere.exists()
    assert (
        evaluation_data_config(
            prepare.Config().data.model_copy(update={"dataset": "cifar10", "dir": str(elsewhere)})
        ).dir
        is None
    )


# ---------------------------------------------------------------- 6. concurrency


def _start_training(root: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [
        sys.executable,
        "-m",
        "cifarlab",
        "train",
        "smoke",
        f"output.dir={root}",
        "checkpoint.every_steps=3",
        *FAST,
        *extra,
    ]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not list(root.glob("smoke/*/checkpoints/last.pt")):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return process, next((root / "smoke").iterdir())


@pytest.mark.slow  # a training subprocess
def test_resume_of_a_run_still_training_is_refused_and_the_lock_dies_with_the_trainer(tmp_path):
    process, run_dir = _start_training(tmp_path, "train.epochs=200")
    try:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        second = subprocess.run(
            [sys.executable, "-m", "cifarlab", "resume", str(run_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert process.poll() is None, "the trainer finished before the second process tried"
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "is being trained by another process" in lines[0] and "Traceback" not in second.stderr
        assert len(list((run_dir / "checkpoints").glob("*.pt"))) >= 1
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    with lock.RunLock(run_dir).acquire():  # the kernel dropped the killed trainer's lock
        pass
    assert not (run_dir / layout.LOCK).exists()  # and the lock left no file behind


@pytest.mark.slow
def test_a_resumed_run_holds_the_lock_while_it_trains(runs, tmp_path, capsys):
    run = _copy(runs[OPEN], tmp_path / "run")
    holders = []

    class TryTheLock:
        def on_fit_start(self, state): ...
        def on_epoch_start(self, state): ...
        def on_step_end(self, state): ...
        def on_fit_end(self, state): ...

        def on_epoch_end(self, state):
            code = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    (
                        "import sys; from cifarlab.run.lock import RunLock; from cifarlab.errors import UserError\n"
                        "try:\n    RunLock(sys.argv[1]).acquire()\nexcept UserError as e:\n    print(e); sys.exit(3)"
                    ),
                    str(run),
                ],
                env={**os.environ, "PYTHONPATH": str(SRC)},
                capture_output=True,
                text=True,
            )
            holders.append((code.returncode, code.stdout.strip()))

    from cifarlab.experiment import resume

    resume(run, callbacks=[TryTheLock()])
    capsys.readouterr()
    assert holders and all(code == 3 and "being trained by another process" in text for code, text in holders)
    with lock.RunLock(run).acquire():  # released when the run is over
        pass


@pytest.mark.slow
def test_compare_counts_the_same_run_once_however_spelled(runs, tmp_path, capsys):
    done = runs[DONE]
    assert main(["compare", str(done), str(done), f"{done}/../{done.name}", "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    with open(tmp_path / "cmp" / "comparison.csv", newline="") as handle:
        assert [row["run"] for row in csv.DictReader(handle)] == [f"smoke/{done.name}"]
    from cifarlab.analysis.compare import compare_runs
    from cifarlab.errors import UserError

    with pytest.raises(UserError, match="is given twice"):  # from Python, a duplicate is a mistake to name
        compare_runs([done, f"{done}/../{done.name}"])


@pytest.mark.slow
def test_compare_labels_runs_with_the_same_recipe_and_stamp_apart(runs, tmp_path, capsys):
    stamp = runs[DONE].name
    first = _copy(runs[DONE], tmp_path / "a" / "smoke" / stamp)
    second = _copy(runs[DONE], tmp_path / "b" / "smoke" / stamp)
    assert main(["compare", str(first), str(second), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    with open(tmp_path / "cmp" / "comparison.csv", newline="") as handle:
        labels = [row["run"] for row in csv.DictReader(handle)]
    assert labels == [f"a/smoke/{stamp}", f"b/smoke/{stamp}"]


# ---------------------------------------------------------------- 7. the end-of-run window


@pytest.mark.slow  # kills a training subprocess
def test_kill_between_the_final_checkpoint_and_summary_json_then_resume_rebuilds_it(tmp_path, capsys):
    """A real process is SIGKILLed at the moment summary.json would be written; resume finishes the
    bookkeeping from last.pt (no training), after which the run reads as finished everywhere."""
    code = (
        "import os, signal, sys\n"
        "import cifarlab.experiment as experiment\n"
        "experiment.write_summary = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from cifarlab.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = ["train", "smoke", f"output.dir={tmp_path}", "train.epochs=1", "schedule.peak_epoch=0.5", *FAST]
    killed = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = next((tmp_path / "smoke").iterdir())
    assert not (run_dir / "summary.json").exists()
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["status"] == "completed"
    weights = {
        name: hashlib.sha256((run_dir / "checkpoints" / name).read_bytes()).hexdigest()
        for name in ("last.pt", "best.pt")
    }
    metrics = (run_dir / "metrics.csv").read_text()

    assert main(["compare", str(run_dir), "--out", str(tmp_path / "cmp")]) == 2  # before: unreadable
    assert main(["resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "summary.json is missing: rebuilding it" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert summary["best_test_acc"] == last["history"][0]["test_acc"]
    assert (run_dir / "metrics.csv").read_text() == metrics  # nothing trained again
    assert weights == {
        name: hashlib.sha256((run_dir / "checkpoints" / name).read_bytes()).hexdigest()
        for name in ("last.pt", "best.pt")
    }
    assert main(["resume", str(run_dir)]) == 2 and "already finished" in capsys.readouterr().err
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "cmp")]) == 0


def test_a_stale_summary_of_a_finished_run_is_rebuilt(runs, tmp_path, capsys):
    run = _copy(runs[DONE], tmp_path / "run")
    old = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**old, "status": "interrupted", "epochs_completed": 0}))
    assert main(["resume", str(run)]) == 0
    assert "summary.json is out of date: rebuilding it" in capsys.readouterr().err
    new = json.loads((run / "summary.json").read_text())
    assert new["status"] == "completed" and new["best_test_acc"] == old["best_test_acc"]


def test_every_metrics_csv_row_is_fsynced(tmp_path, monkeypatch, capsys):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr("os.fsync", fsync)
    assert main(["train", "smoke", f"output.dir={tmp_path}", *FAST]) == 0
    capsys.readouterr()
    run_dir = next((tmp_path / "smoke").iterdir())
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert sum(1 for row in rows if row.startswith("epoch,")) == 2  # train.epochs=2
    assert [path for path in synced if Path(path).name == "metrics.csv"] == [
        str(run_dir.resolve() / "metrics.csv")
    ] * len(rows)


def test_where_directories_cannot_be_locked_a_lock_file_takes_over(tmp_path, monkeypatch):
    """Some file systems (NFS) refuse flock on a directory: the lock falls back to `.lock` in the run."""
    import errno
    import fcntl
    import stat

    real_flock = fcntl.flock

    def flock(fd, operation):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real_flock(fd, operation)

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    first = lock.RunLock(tmp_path).acquire()
    assert (tmp_path / layout.LOCK).is_file()
    with pytest.raises(lock.UserError, match="is being trained by another process"):
        lock.RunLock(tmp_path).acquire()
    first.release()
    lock.RunLock(tmp_path).acquire().release()
