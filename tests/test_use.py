"""One loader and one predict: `cifarlab predict` and `cifarlab.predict()` give the same probabilities for a
bf16 and an fp32 run, loading leaves the caller's RNGs alone, and `eval` builds no training loader."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cifarlab
from cifarlab.cli import main
from cifarlab.data.loader import DeviceLoader
from cifarlab.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src"
QUIET = ["output.tensorboard=false", "output.progress=none", "train.device=cpu", "train.threads=1",
         "checkpoint.every_epochs=100"]


# bf16 training is emulated (~10x slower) on a CPU without AVX512-BF16 or AMX: its half is in the slow tier.
@pytest.fixture(scope="module", params=["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def run(request, tmp_path_factory):
    """(best.pt, PNG files of 6 of its test images, precision) of a smoke run trained in fp32 or bf16
    (bf16 autocast runs on any x86 CPU, emulated and slower without AVX512-BF16)."""
    from cifarlab.data.prepare import load_data

    tmp = tmp_path_factory.mktemp(f"use-{request.param}")
    trained = cifarlab.train("smoke", [f"output.dir={tmp}", *QUIET, f"train.precision={request.param}"])
    images = load_data(trained.config.data, trained.config.seed).test.images[:6]
    paths = [tmp / f"image{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return trained.run_dir / "checkpoints" / "best.pt", paths, request.param


@pytest.mark.slow  # a CLI subprocess: 5-25 s on 2 shared cores
def test_cli_and_api_predict_give_identical_probabilities(run):
    checkpoint, paths, precision = run
    model = cifarlab.load_model(checkpoint)
    assert model.precision.name == model.card.precision == precision  # by default the run's own, as the CLI
    everything = len(model.classes)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "cifarlab", "predict", str(checkpoint), *map(str, paths),
                           "--top", str(everything), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    from_cli = [[tuple(pair) for pair in json.loads(line)["top"]] for line in done.stdout.splitlines()]
    assert from_cli == cifarlab.predict(checkpoint, paths, top=everything)  # exactly: same floats, same order
    assert from_cli == cifarlab.predict(model, paths, top=everything)


def test_the_default_precision_is_the_runs_own_and_can_be_overridden(run):
    checkpoint, paths, precision = run
    fp32 = cifarlab.load_model(checkpoint, precision="fp32")
    assert fp32.precision.name == "fp32" and fp32.card.precision == precision
    with pytest.raises(UserError, match="precision must be one of auto, bf16, fp16, fp32"):
        cifarlab.load_model(checkpoint, precision="int8")


def test_loading_predicting_and_evaluating_leave_the_callers_rngs_alone(run, capsys):
    checkpoint, paths, _ = run
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    cifarlab.predict(cifarlab.load_model(checkpoint), paths)
    assert main(["eval", str(checkpoint)]) == 0
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])


def test_eval_builds_no_training_loader(run, monkeypatch, capsys):
    checkpoint, _, _ = run
    built = []
    original = DeviceLoader.__init__

    def spy(self, *args, train=False, **kwargs):
        built.append(train)
        original(self, *args, train=train, **kwargs)

    monkeypatch.setattr(DeviceLoader, "__init__", spy)
    assert main(["eval", str(checkpoint)]) == 0
    assert built == [False], f"eval built loaders with train={built}"
