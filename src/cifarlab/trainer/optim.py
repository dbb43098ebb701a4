"""Optimizers and LR schedules built from their config sections.

`Schedule` hides which torch scheduler steps per batch and which per epoch, so the loop calls
`after_step()` and `after_epoch(metrics)` and never asks which one it has.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from cifarlab.errors import UserError

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, cfg) -> list[dict]:
    """One group of trainable parameters, or with `cfg.norm_lr_scale` two: the other parameters first
    (what logs show as the lr), then normalisation layers' at lr x scale and weight decay / scale.
    Each group's `lr_scale` tells the schedule its peak relative to the first's."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen ones (fastnet's whitening) left out
    if cfg.norm_lr_scale is None:
        return [{"params": trainable, "lr_scale": 1.0}]
    in_norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    norm = [p for p in trainable if id(p) in in_norm]
    other = [p for p in trainable if id(p) not in in_norm]
    scale = cfg.norm_lr_scale
    groups = [{"params": other, "lr_scale": 1.0}, {"params": norm, "lr": cfg.lr * scale, "lr_scale": scale,
                                                  "weight_decay": cfg.weight_decay / scale}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """`cfg` is the `optim` section; see `param_groups`."""
    params = param_groups(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


class Schedule:
    """One LR schedule over `epochs` x `steps_per_epoch` optimizer steps.

    onecycle and cosine are defined over those planned steps. A run extended past them (`resume --epochs`)
    holds the lr the plan ended at for the added steps: onecycle's final lr (lr_peak / div_factor /
    final_div_factor), cosine's `min_lr`; it never goes back to the peak. Per-epoch schedules (constant,
    step, multistep, plateau) do not depend on the total and simply continue."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, base_lr: float, epochs: int, steps_per_epoch: int):
        self.name = cfg.name
        # trainer/build.py names it for the run's data (null: val_loss with a validation split)
        self.monitor = cfg.watched_metric(has_validation=False)
        self.optimizer = optimizer
        self.per_step = cfg.name in ("onecycle", "cosine")
        self.scheduler = _build(optimizer, cfg, base_lr, epochs, steps_per_epoch)
        self.planned_steps = epochs * steps_per_epoch
        self.lr_used = self.lr  # the lr of the last optimizer step, what logs should show

    def after_step(self) -> None:
        self.lr_used = self.lr
        if not self.per_step:
            return
        if self.scheduler.last_epoch < self.planned_steps:
            self.scheduler.step()
        else:  # past the plan: only in a run extended with `resume --epochs`
            self._hold_final_lr()

    def _hold_final_lr(self) -> None:
        # OneCycleLR cannot step past its total (and extrapolates at it); WarmupCosine clamps by itself.
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            for group in self.optimizer.param_groups:
                group["lr"] = group["min_lr"]

    def after_epoch(self, row) -> None:
        """At an epoch's end: `row` is its run/metrics.EpochRow (plateau watches one of its metrics)."""
        if self.name == "plateau":
            self.scheduler.step(row.value(self.monitor))
        elif not self.per_step and self.scheduler is not None:
            self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
            if self.per_step and self.scheduler.last_epoch >= self.planned_steps:
                self._hold_final_lr()  # an extended run starts its added steps at the plan's final lr


def peak_lr(cfg, optim_lr: float) -> float:
    if cfg.lr_peak == "auto":
        raise RuntimeError("schedule.lr_peak=auto must be resolved by the range test before building the schedule")
    return optim_lr if cfg.lr_peak is None else float(cfg.lr_peak)


def _build(optimizer, cfg, base_lr: float, epochs: int, steps_per_epoch: int):
    S = torch.optim.lr_scheduler
    total_steps = epochs * steps_per_epoch
    if cfg.name == "constant":
        return None
    if cfg.name == "onecycle":
        pct_start = cfg.pct_start if cfg.peak_epoch is None else cfg.peak_epoch / epochs  # range checked in config
        cycle_steps, pct_start = onecycle_phases(total_steps, pct_start)
        # No annihilation (final_div_factor unset): the cycle ends where it began, at lr_peak / div_factor.
        final_div = cfg.final_div_factor if cfg.final_div_factor is not None else 1.0
        peaks = [peak_lr(cfg, base_lr) * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        return S.OneCycleLR(optimizer, max_lr=peaks, total_steps=cycle_steps, pct_start=pct_start,
                            div_factor=cfg.div_factor, final_div_factor=final_div, anneal_strategy=cfg.anneal,
                            cycle_momentum=cfg.cycle_momentum)
    if cfg.name == "step":
        return S.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "multistep":
        return S.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.name == "plateau":
        return S.ReduceLROnPlateau(optimizer, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience,
                                   threshold=cfg.threshold, threshold_mode=cfg.threshold_mode,
                                   cooldown=cfg.cooldown, min_lr=cfg.min_lr, eps=cfg.eps)
    if cfg.name == "cosine":
        warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        floor = cfg.min_lr / base_lr
        return S.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, floor))
    raise UserError(f"unknown schedule {cfg.name!r}")


def onecycle_phases(total_steps: int, pct_start: float) -> tuple[int, float]:
    """(steps of the cycle, pct_start) with each phase at least one step long.

    OneCycleLR puts its peak at step pct_start * total - 1 and divides by each phase's length, so a phase
    of zero steps (4 steps in all at pct_start 0.25) is a ZeroDivisionError and a phase shorter than one
    step skips the warm-up. So the peak lands on step 1 or later and at least one step follows it; a run
    of fewer than 3 steps follows the first steps of a 3-step cycle (the Schedule stops at its own total)."""
    cycle_steps = max(total_steps, 3)
    earliest, latest = 2 / cycle_steps, 1 - 1 / cycle_steps
    return cycle_steps, float(min(max(pct_start, earliest), latest))


class WarmupCosine:
    """Linear warmup to 1, then cosine decay to `floor` (a multiplier of the base lr)."""

    def __init__(self, warmup_steps: int, total_steps: int, floor: float = 0.0):
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, max(total_steps, 1), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class GradStep:
    """backward + optional unscale/clip + optimizer step, with or without an fp16 GradScaler.

    `grad_step(loss)` is `backward(loss)` then `step()`; gradient accumulation calls `backward` once per
    micro-batch (zeroing only on the first) and `step` once (trainer/accumulate.py)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
                 grad_clip: Optional[float]):
        self.optimizer, self.scaler, self.grad_clip = optimizer, scaler, grad_clip

    def __call__(self, loss: torch.Tensor) -> None:
        self.backward(loss)
        self.step()

    def backward(self, loss: torch.Tensor, zero: bool = True) -> None:
        """Gradients of `loss` (scaled under fp16), added to the current ones unless `zero`."""
        if zero:
            self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self) -> None:
        """Unscale (fp16), clip, and step on the gradients summed since the last zeroing."""
        if self.scaler is None:
            self._clip()
            self.optimizer.step()
            return
        self.scaler.unscale_(self.optimizer)
        self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _clip(self) -> None:
        if self.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
