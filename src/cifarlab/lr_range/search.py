"""The range test run on a recipe: `cifarlab lr-find` and `schedule.lr_peak: auto` both come here."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch

from cifarlab.atomic import atomic_write_text
from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.lr_range.finder import RangeTestResult, Step, plot_range_test, range_test
from cifarlab.progress import PhaseProgress
from cifarlab.run.layout import LR_FIND, LR_FIND_PLOT, PLOTS
from cifarlab.runtime import Runtime
from cifarlab.trainer.accumulate import forward_backward
from cifarlab.trainer.build import build_state
from cifarlab.trainer.state import TrainState


def _cycle(loader) -> Iterator:
    """Training batches, epoch after epoch, augmented as in training."""
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


# torch's OneCycleLR cycles SGD's momentum or Adam's beta1 between 0.95 and this (its default
# base_momentum, which optim.py keeps), and is at this value when the lr peaks.
ONECYCLE_PEAK_MOMENTUM = 0.85


def range_test_state(cfg: Config, runtime: Runtime, dataset: Dataset) -> TrainState:
    """A fresh model and optimizer of this recipe, built exactly as training builds them (precision,
    GradScaler, grad_clip, channels_last), with the EMA off: the range test measures the raw weights.

    The sweep takes the step training takes at the lr it is looking for, the schedule's peak. So the
    schedule itself is left out (torch's OneCycleLR sets momentum to 0.95 when built, whatever
    optim.momentum says), and under OneCycle the momentum (SGD) or beta1 (Adam) is the 0.85 the cycle has
    at its peak: for SGD the step scales with lr / (1 - momentum), so sweeping at 0.95 or at the
    configured 0.9 instead would put the loss minimum 3x or 1.5x too low."""

    schedule = cfg.schedule.model_copy(update={"name": "constant", "lr_peak": None})
    train = cfg.train.model_copy(update={"ema": None})
    state = build_state(cfg.model_copy(update={"schedule": schedule, "train": train}), runtime, dataset, Path("."))
    if cfg.schedule.name == "onecycle" and cfg.schedule.cycle_momentum:
        for group in state.objects.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (ONECYCLE_PEAK_MOMENTUM, group["betas"][1])
            else:
                group["momentum"] = ONECYCLE_PEAK_MOMENTUM
    return state


def training_step(state: TrainState) -> Step:
    """One optimizer step as training's train_step takes it: forward under the run's autocast, then the
    state's GradStep (GradScaler when fp16, unscale and clip to optim.grad_clip, step). It calls the
    plain model, not `train_model`: under DDP each rank stops the sweep on its own loss, and a collective
    that one rank skips would hang the others; under torch.compile the sweep would compile a model that
    training then throws away."""
    micro_size = state.cfg.train.batch_size // state.runtime.dist.world_size  # train.accumulate as in training

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        objects = state.objects
        loss, _ = forward_backward(objects.model, objects.loss_fn, state.runtime.precision, objects.grad_step,
                                   inputs, labels, micro_size)
        state.objects.grad_step.step()
        return loss

    return step


def run_range_test(cfg: Config, runtime: Runtime, dataset: Dataset) -> RangeTestResult:
    """The range test on a freshly built model and optimizer of this recipe (weights are left untouched)."""
    state = range_test_state(cfg, runtime, dataset)
    sweep = cfg.lr_find
    mode = cfg.output.progress if runtime.dist.is_main else "none"
    with PhaseProgress("range test", sweep.num_iter, "steps", mode,
                       start_text=f"lr {sweep.start_lr:.3g} to {sweep.end_lr:.3g} ({sweep.step_mode})") as progress:
        def on_step(lr: float, loss: float) -> None:
            progress.update(text=f"lr {lr:.2e}, loss {loss:.4f}")

        objects = state.objects
        return range_test(objects.model, objects.optimizer, training_step(state), _cycle(objects.train_loader), sweep,
                          on_step)


def save_range_test(result: RangeTestResult, out_dir: Path, rule: Optional[str] = None) -> Path:
    (out_dir / PLOTS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / LR_FIND, json.dumps(result.to_dict(), indent=1) + "\n")
    return plot_range_test(result, out_dir / PLOTS / LR_FIND_PLOT, rule)


LABELS = {"minimum": "minimum (centred smoothing)", "steepest": "steepest descent (vs log lr)", "valley": "valley"}


def describe(result: RangeTestResult, rule: Optional[str] = None) -> str:
    """Every rule's lr, then the config line to use, e.g. `set schedule.lr_peak=1.23e-02 (rule: minimum)`."""
    rule = rule or result.rule
    stopped = " (stopped early: loss diverged)" if result.stopped_early else ""
    lines = [f"range test over {len(result.lrs)} steps{stopped}"]
    for name, lr in result.suggestions().items():
        lines.append(f"  {LABELS[name]}: {'none' if lr is None else f'{lr:.3g}'}"
                     f"{'  <- chosen' if name == rule else ''}")
    chosen = result.suggestions().get(rule)
    if chosen is None:
        lines.append(f"no lr by rule {rule!r}: widen lr_find.start_lr/end_lr or raise lr_find.num_iter")
        return "\n".join(lines)
    max_lr, div_factor = result.onecycle(rule)
    lines.append(f"  OneCycle: max_lr={max_lr:.3g}, div_factor={div_factor:.3g} (starts where the loss starts falling)")
    lines.append(f"set schedule.lr_peak={chosen:.2e} (rule: {rule})")
    return "\n".join(lines)


def find_peak_lr(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> Config:
    """Resolve `schedule.lr_peak: auto`: run the range test, save its plot, return the config with the value."""
    result = run_range_test(cfg, runtime, dataset)
    lr_peak = result.suggestion(cfg.lr_find.suggestion)
    if runtime.dist.enabled:  # every rank swept its own init; all train with rank 0's answer
        import torch.distributed as dist

        box = [lr_peak]
        dist.broadcast_object_list(box, src=0)
        lr_peak = box[0]
    if runtime.dist.is_main:
        save_range_test(result, run_dir, cfg.lr_find.suggestion)
        print(describe(result, cfg.lr_find.suggestion) + f"\nusing lr_peak={lr_peak:.3g}", file=sys.stderr)
    schedule = cfg.schedule.model_copy(update={"lr_peak": float(lr_peak)})
    return cfg.model_copy(update={"schedule": schedule})
