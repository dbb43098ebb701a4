"""airbench-style training pieces: per-group learning rates, a whitening bias trained in early epochs
only, flip+translate TTA, and compile warm-up timed apart from training."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cifarlab.cli import main
from cifarlab.config import load_config
from cifarlab.models.inference import log_probs
from cifarlab.models.registry import create_model
from cifarlab.trainer.optim import Schedule, build_optimizer

SMALL = ["train.device=cpu", "train.threads=1", "train.precision=fp32", "output.tensorboard=false",
         "output.progress=none", "output.report=false"]


def test_norm_parameters_get_scaled_lr_and_weight_decay_through_the_whole_schedule():
    cfg = load_config("fast", ["model.options.widths=[8, 16, 16]"])
    model = create_model("fastnet", widths=[8, 16, 16])
    optimizer = build_optimizer(model, cfg.optim)
    other, norm = optimizer.param_groups
    assert all(p.ndim == 1 for p in norm["params"]) and len(norm["params"]) == 6  # the six BN biases
    assert norm["weight_decay"] * norm["lr"] == pytest.approx(other["weight_decay"] * other["lr"])
    schedule = Schedule(optimizer, cfg.schedule, cfg.optim.lr, epochs=3, steps_per_epoch=4)
    for _ in range(12):
        assert norm["lr"] == pytest.approx(64 * other["lr"])
        optimizer.step()
        schedule.after_step()


@pytest.mark.slow
def test_whitening_bias_trains_only_in_its_first_epochs(tmp_path):
    args = ["train", "smoke", f"output.dir={tmp_path}", *SMALL, "train.epochs=3", "model.name=fastnet",
            "model.options={widths: [8, 16, 16], whiten_bias_epochs: 1}",
            "data.options={num_train: 256, num_test: 64, image_size: 16}", "checkpoint.every_epochs=1"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "smoke").iterdir()
    from cifarlab.run.checkpoint import load_checkpoint

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    prev = load_checkpoint(run_dir / "checkpoints" / "last.prev.pt")  # the epoch-2 save
    assert prev["epoch"] == 2 and last["epoch"] == 3
    assert torch.equal(prev["model"]["whiten.bias"], last["model"]["whiten.bias"]), "frozen after epoch 1"
    assert not torch.equal(prev["model"]["group1.conv1.weight"], last["model"]["group1.conv1.weight"])


def test_flip_translate_tta_is_the_weighted_mean_of_eight_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [(x, .25), (x.flip(3), .25)] + [(v, .125) for s in (padded[..., :8, :8], padded[..., 2:, 2:])
                                             for v in (s, s.flip(3))]
    expected = sum(w * model(v).softmax(1) for v, w in views).log()
    assert torch.allclose(log_probs(model, x, tta="flip_translate"), expected, atol=1e-6)
    flip = (0.5 * model(x).softmax(1) + 0.5 * model(x.flip(3)).softmax(1)).log()
    assert torch.allclose(log_probs(model, x, tta="flip"), flip, atol=1e-6)
    assert torch.allclose(log_probs(model, x, tta=None).exp().sum(1), torch.ones(2))


@pytest.mark.slow
def test_compile_warmup_is_reported_apart_from_training_time(tmp_path, monkeypatch, capsys):
    slow = {"calls": 0}

    def fake_compile(model, mode=None):  # stands in for torch.compile: its first calls are slow
        def forward(*args, **kwargs):
            slow["calls"] += 1
            if slow["calls"] <= 2:
                import time
                time.sleep(0.5)
            return model(*args, **kwargs)
        wrapper = torch.nn.Module()
        wrapper.forward = forward
        wrapper.train = model.train
        return wrapper

    monkeypatch.setattr(torch, "compile", fake_compile)
    args = ["train", "smoke", f"output.dir={tmp_path}", *SMALL, "train.compile=reduce-overhead",
            "output.progress=lines"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "smoke").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compile_seconds"] >= 1.0
    # Compiling is inside the wall time but not inside the training time.
    assert summary["train_seconds"] + summary["compile_seconds"] <= summary["wall_seconds"]
    assert "s compiling)" in capsys.readouterr().err
    assert not math.isnan(summary["best_test_acc"])


def test_a_compiled_run_drops_the_ragged_last_batch_so_every_step_has_one_shape(monkeypatch):
    from cifarlab.data.prepare import load_data
    from cifarlab.runtime import make_runtime
    from cifarlab.trainer.build import build_state

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)
    for compiled, steps in ((False, 5), (True, 4)):  # 300 images in batches of 64: 4 full + 44
        cfg = load_config("smoke", ["data.options={num_train: 300, num_test: 64, image_size: 16}",
                                    f"train.compile={str(compiled).lower()}", "train.device=cpu"])
        state = build_state(cfg, make_runtime(cfg.train), load_data(cfg.data), Path("."))
        shapes = {inputs.shape[0] for inputs, _ in state.objects.train_loader.batches(0)}
        assert len(state.objects.train_loader) == steps and (shapes == {64} if compiled else shapes == {64, 44})


@pytest.mark.slow  # torch.compile for real: ~30 s idle
def test_a_really_compiled_run_trains_like_an_eager_one_and_its_checkpoint_loads_without_compile(tmp_path):
    """torch.compile for real (inductor on the CPU, ~30 s): same losses as eager within float noise, the
    warm-up reported apart, and best.pt holds the plain model's weights (no `_orig_mod.` names)."""
    from cifarlab import load_model

    base = ["train", "smoke", *SMALL, "train.epochs=2", "data.options={num_train: 256, num_test: 64, image_size: 16}"]
    summaries = {}
    for mode in ("null", "default"):
        out = tmp_path / mode
        assert main([*base, f"output.dir={out}", f"train.compile={mode}"]) == 0
        (run_dir,) = (out / "smoke").iterdir()
        summaries[mode] = json.loads((run_dir / "summary.json").read_text())
    eager, compiled = summaries["null"], summaries["default"]
    assert compiled["compile_seconds"] > 0 and eager["compile_seconds"] == 0
    assert compiled["final_train_acc"] == pytest.approx(eager["final_train_acc"], abs=0.02)
    assert compiled["final_test_loss"] == pytest.approx(eager["final_test_loss"], rel=0.02)
    model = load_model(run_dir / "checkpoints" / "best.pt")
    assert not any("_orig_mod" in name for name in model.module.state_dict())


def test_freezing_the_whitening_bias_times_the_recompile_as_compiling_not_training(monkeypatch):
    """A parameter that stops training changes a compiled graph: torch.compile traces again at that epoch,
    and those steps must land in compile_seconds, not in the epoch's images/s."""
    from cifarlab.data.prepare import load_data
    from cifarlab.runtime import make_runtime
    from cifarlab.trainer.build import build_state
    from cifarlab.trainer.callbacks.model_epochs import ModelEpochs
    from cifarlab.trainer.state import COMPILE_WARMUP_STEPS

    monkeypatch.setattr(torch, "compile", lambda model, mode=None: model)
    for compiled in (True, False):
        cfg = load_config("smoke", ["model.name=fastnet", "model.options={widths: [8, 16, 16], whiten_bias_epochs: 2}",
                                    "data.options={num_train: 128, num_test: 64, image_size: 16}", "train.device=cpu",
                                    f"train.compile={str(compiled).lower()}"])
        state = build_state(cfg, make_runtime(cfg.train), load_data(cfg.data), Path("."))
        armed = []
        for epoch in range(4):
            state.progress.epoch, state.process.compile_warmup_steps = epoch, 0
            ModelEpochs().on_epoch_start(state)
            armed.append(state.process.compile_warmup_steps)
        # epoch 0: the bias trains as built; epoch 2: it stops training -> a new graph; no change after
        assert armed == ([0, 0, COMPILE_WARMUP_STEPS, 0] if compiled else [0, 0, 0, 0])
