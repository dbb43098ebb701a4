"""The range test on a recipe (`cifarlab lr-find`, `lr_peak: auto`) takes training's own step."""
import pytest
import torch

from cifarlab.config import load_config
from cifarlab.experiment import load_data
from cifarlab.lr_range import search as lr_search
from cifarlab.runtime import make_runtime

QUIET = ["output.report=false", "output.tensorboard=false", "output.progress=none"]


def smoke(overrides):
    cfg = load_config("smoke", QUIET + ["train.precision=fp32"] + overrides)
    return cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data)


def flat_weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_range_test_clips_gradients_like_training(monkeypatch):
    # Plain SGD (no momentum, no weight decay) moves the weights by exactly lr x the clipped gradient, so a
    # clipped step moves them by lr * grad_clip and an unclipped one by lr * |grad| (much more here). The
    # lrs are large enough that float32 rounding of the weights stays far below the 1 % tolerance. A
    # constant schedule: under OneCycle the sweep takes the cycle's peak momentum (next test).
    clip = 1e-3
    cfg, runtime, dataset = smoke(["optim.momentum=0", "optim.weight_decay=0", f"optim.grad_clip={clip}",
                                   "schedule.name=constant",
                                   "lr_find.start_lr=0.3", "lr_find.end_lr=10", "lr_find.num_iter=12"])
    moves, seen = [], {}
    real_step = lr_search.training_step

    def watched_step(state):
        step = real_step(state)
        seen["state"] = state

        def watched(inputs, labels):
            before = flat_weights(state.objects.model)
            loss = step(inputs, labels)
            moved = float((flat_weights(state.objects.model) - before).norm())
            grad_norm = float(torch.cat([p.grad.flatten() for p in state.objects.model.parameters()]).norm())
            moves.append((state.objects.optimizer.param_groups[0]["lr"], moved, grad_norm))
            return loss

        return watched

    monkeypatch.setattr(lr_search, "training_step", watched_step)
    result = lr_search.run_range_test(cfg, runtime, dataset)
    assert len(moves) == len(result.lrs) == 12
    for lr, moved, grad_norm in moves:
        assert grad_norm <= clip * (1 + 1e-4)
        assert lr * clip * 0.99 <= moved <= lr * clip * 1.01  # so the clip was hit: raw gradients are larger
    assert seen["state"].objects.grad_step.grad_clip == clip


def test_range_test_state_is_the_training_state_without_ema():
    cfg, runtime, dataset = smoke(["train.ema=0.9", "train.channels_last=true"])
    state = lr_search.range_test_state(cfg, runtime, dataset)
    assert state.objects.ema is None
    conv = next(m for m in state.objects.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    inputs, _ = next(iter(state.objects.train_loader.batches(0)))
    assert inputs.is_contiguous(memory_format=torch.channels_last)


def test_range_test_step_goes_through_the_grad_scaler_and_unscales_before_clipping():
    # fp16 needs CUDA, but the state's GradStep with a GradScaler runs on a CPU too: the sweep must scale
    # the loss, unscale before clipping (else the clipped step would be lr * clip / scale) and update the
    # scale every step, as training does.
    from cifarlab.lr_range.finder import range_test
    from cifarlab.trainer.optim import GradStep

    clip = 1e-3
    cfg, runtime, dataset = smoke(["optim.momentum=0", "optim.weight_decay=0", f"optim.grad_clip={clip}",
                                   "schedule.name=constant",
                                   "lr_find.start_lr=0.3", "lr_find.end_lr=10", "lr_find.num_iter=6"])
    state = lr_search.range_test_state(cfg, runtime, dataset)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
    state.objects.grad_step = GradStep(state.objects.optimizer, scaler, clip)
    step, moves = lr_search.training_step(state), []

    def watched(inputs, labels):
        before = flat_weights(state.objects.model)
        loss = step(inputs, labels)
        lr = state.objects.optimizer.param_groups[0]["lr"]
        moves.append((lr, float((flat_weights(state.objects.model) - before).norm())))
        return loss

    objects = state.objects
    range_test(objects.model, objects.optimizer, watched, lr_search._cycle(objects.train_loader), cfg.lr_find)
    assert len(moves) == 6
    assert scaler.get_scale() == 2.0 ** 16  # doubled after each of the 6 finite steps
    for lr, moved in moves:
        assert lr * clip * 0.99 <= moved <= lr * clip * 1.01


@pytest.mark.parametrize("optim, key", [("sgd", "momentum"), ("adam", "betas")])
def test_range_test_under_onecycle_takes_the_momentum_of_the_cycle_peak(optim, key):
    # OneCycle runs its peak lr with momentum (or beta1) 0.85, whatever optim.momentum says; a constant
    # schedule runs the optimizer as configured.
    peak = {}
    for schedule in ("onecycle", "constant"):
        cfg, runtime, dataset = smoke([f"optim.name={optim}", "optim.momentum=0.9", "optim.betas=[0.9, 0.99]",
                                       f"schedule.name={schedule}"])
        group = lr_search.range_test_state(cfg, runtime, dataset).objects.optimizer.param_groups[0]
        peak[schedule] = group[key] if key == "momentum" else group[key][0]
        if key == "betas":
            assert group[key][1] == 0.99
    assert peak == {"onecycle": 0.85, "constant": 0.9}
