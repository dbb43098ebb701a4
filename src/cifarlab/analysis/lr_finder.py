"""Learning-rate range test (Smith 2015, arXiv:1506.01186; popularised by fastai's `lr_find`).

Train for `num_iter` steps while the learning rate sweeps from `start_lr` to `end_lr`, record the loss,
and suggest a learning rate from the smoothed loss curve. The model and optimizer are put back exactly as
they were, so the test can run right before training.

Why our own rather than torch-lr-finder: it takes the "steepest" slope as `np.gradient(losses)` against the
sample index, i.e. against raw lr in linear mode, over the whole curve including the noisy start and
the diverging tail past the minimum, so on noisy curves it can suggest a point that is not on the
descent; it also pulls in extra dependencies. We take the slope against log(lr), skip the first 10 % of
points and ignore everything after the minimum.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Optional, Union

import numpy as np
import torch
from torch import nn

from cifarlab.config import LRFindConfig
from cifarlab.errors import UserError

Rule = Literal["steepest", "valley"]
Batches = Union[Callable[[], tuple[torch.Tensor, torch.Tensor]], Iterator, Iterable]
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> loss, after one optimizer step

# OneCycle's initial lr = max_lr / div_factor; the range test chooses div_factor within these bounds.
DIV_FACTOR_BOUNDS = (5.0, 100.0)
# The descent starts where the smoothed loss has fallen by this fraction of its total drop.
DESCENT_START_FRACTION = 0.1


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]  # bias-corrected exponential moving average of `losses`
    steepest_lr: Optional[float]
    valley_lr: Optional[float]
    stopped_early: bool  # True when the smoothed loss diverged before num_iter steps

    def suggestion(self, rule: Rule = "steepest") -> float:
        if rule not in ("steepest", "valley"):
            raise UserError(f"lr_find.suggestion must be 'steepest' or 'valley', got {rule!r}")
        lr = self.steepest_lr if rule == "steepest" else self.valley_lr
        if lr is None:
            raise UserError(
                f"the LR range test found no descending part of the loss curve over {len(self.lrs)} steps "
                f"(lr {self.lrs[0]:.2e}..{self.lrs[-1]:.2e}); widen lr_find.start_lr/end_lr or raise num_iter"
            )
        return lr

    def descent_start_lr(self) -> Optional[float]:
        """The lr where the smoothed loss has fallen by 10 % of its total drop (after the skipped head)."""
        index = descent_start_index(self.smoothed)
        return None if index is None else self.lrs[index]

    def onecycle(self, rule: Rule = "steepest") -> tuple[float, float]:
        """(max_lr, div_factor) for OneCycle: the peak is the suggestion, and the initial lr
        (max_lr / div_factor) sits where the loss starts falling, i.e. div_factor = max_lr / descent_start_lr,
        clamped to [5, 100] so the warm-up neither starts at the peak nor crawls from a negligible lr."""
        max_lr = self.suggestion(rule)
        start_lr = self.descent_start_lr()
        low, high = DIV_FACTOR_BOUNDS
        div_factor = high if not start_lr else min(max(max_lr / start_lr, low), high)
        return max_lr, float(div_factor)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RangeTestResult":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


# ---------------------------------------------------------------- suggestions on arrays

def _head(n: int) -> int:
    """Points skipped at the start: the first ~10 % are dominated by smoothing warm-up and noise."""
    return n // 10


def steepest_index(lrs, smoothed) -> Optional[int]:
    """Index of the most negative slope d(loss)/d(log lr), between the skipped head and the minimum."""
    loss = np.asarray(smoothed, dtype=np.float64)
    log_lr = np.log(np.asarray(lrs, dtype=np.float64))
    if len(loss) < 3:
        return None
    end = int(np.argmin(loss)) + 1  # nothing past the minimum: that is the diverging side
    start = _head(len(loss))
    if end - start < 2:
        return None
    slope = np.gradient(loss, log_lr)[start:end]
    index = int(np.argmin(slope))
    return start + index if slope[index] < 0 else None


def valley_index(lrs, smoothed) -> Optional[int]:
    """fastai's `valley` rule (fastai/callback/schedule.py, from ESRI's suggester), our implementation.

    Find the longest strictly decreasing subsequence of the loss (not necessarily contiguous); with
    `end` its last index and `length` its length, fastai sets `start = end - length` and returns
    `start + int(length / 3) + int(length / 6)`, about half-way into the valley (its docs say "roughly
    2/3"). fastai applies it to losses[num_it // 10 : -5]; we skip the same head, and no tail because our
    curve stops at the divergence point.
    """
    loss = np.asarray(smoothed, dtype=np.float64)
    head = _head(len(loss))
    loss = loss[head:]
    n = len(loss)
    if n < 2:
        return None
    run = np.ones(n, dtype=np.int64)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        higher = loss[:i] > loss[i]
        if higher.any():
            run[i] = run[:i][higher].max() + 1
    end = int(np.argmax(run))  # first index of the longest run, as fastai's loop picks it
    length = int(run[end])
    if length < 2:
        return None
    third = length / 3
    start = max(end - length, 0)  # fastai's start can be -1 when the run begins at index 0
    return head + min(start + int(third) + int(third / 2), n - 1)


def descent_start_index(smoothed) -> Optional[int]:
    loss = np.asarray(smoothed, dtype=np.float64)
    head = _head(len(loss))
    if len(loss) - head < 2:
        return None
    bottom = int(np.argmin(loss))
    drop = loss[head] - loss[bottom]
    if bottom <= head or drop <= 0:
        return None
    below = np.nonzero(loss[head:bottom + 1] < loss[head] - DESCENT_START_FRACTION * drop)[0]
    return head + int(below[0])


# ---------------------------------------------------------------- the sweep

def lr_schedule(cfg: LRFindConfig) -> np.ndarray:
    """num_iter lrs from start_lr to end_lr inclusive: geometric (exp) or evenly spaced (linear)."""
    if cfg.step_mode == "exp":
        return np.geomspace(cfg.start_lr, cfg.end_lr, cfg.num_iter)
    return np.linspace(cfg.start_lr, cfg.end_lr, cfg.num_iter)


def _batch_source(batches: Batches) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A callable is called per step; an iterable is cycled (re-iterated when it runs out, if it can be)."""
    if callable(batches) and not hasattr(batches, "__next__"):
        return batches
    state = {"it": iter(batches)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            fresh = iter(batches)
            if fresh is batches:  # a one-shot iterator: cannot restart
                raise UserError("the batches for the LR range test ran out before lr_find.num_iter steps; "
                                "pass a callable or a re-iterable loader, or lower num_iter") from None
            state["it"] = fresh
            return next(state["it"])

    return next_batch


@contextlib.contextmanager
def _restored(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Snapshot model (weights, buffers such as BN running stats, per-module train flags, .grad) and
    optimizer (state such as momentum buffers, param_group lrs), and put them back bit-identically."""
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    modes = {module: module.training for module in model.modules()}
    grads = {p: None if p.grad is None else p.grad.detach().clone() for p in model.parameters()}
    try:
        yield
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        for module, training in modes.items():
            module.training = training
        for param, grad in grads.items():
            param.grad = grad


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Step:
    """A bare training step (forward under `autocast`, backward, optimizer step) for a model outside a
    recipe. A recipe's range test uses its own training step instead (lr_search.training_step), which
    adds the GradScaler and gradient clipping."""
    def step(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, step: Step, batches: Batches,
               cfg: LRFindConfig) -> RangeTestResult:
    """Sweep the lr (set on every param group), run `step` once per lr, record raw and smoothed losses,
    restore `model` and `optimizer`.

    `step(inputs, labels)` must do one whole optimizer step of `optimizer` on `model` and return the loss
    tensor: the range test should measure the step training will take (precision, loss scaling, clipping),
    not an approximation of it.

    Smoothing: avg = (1 - smooth) * avg + smooth * loss, reported as avg / (1 - (1 - smooth) ** step)
    (bias correction, so early values are not pulled towards 0). `smooth` is the weight of the newest
    loss: torch-lr-finder's `smooth_f` (0.05) and fastai's beta = 0.98 is smooth = 0.02; smooth = 0 means
    no smoothing. Stops early when the smoothed loss exceeds diverge_threshold x the best so far, or the
    loss is not finite. Batches must already be on the model's device.
    """
    next_batch = _batch_source(batches)
    lrs, losses, smoothed = [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    keep = 1.0 - cfg.smooth
    with _restored(model, optimizer):
        model.train()
        for index, lr in enumerate(lr_schedule(cfg), start=1):
            for group in optimizer.param_groups:
                group["lr"] = float(lr)
            inputs, labels = next_batch()
            value = float(step(inputs, labels).detach())  # one sync per step: the divergence check needs it
            if not math.isfinite(value):
                stopped_early = True
                break
            avg = keep * avg + cfg.smooth * value
            smooth_value = avg / (1.0 - keep ** index) if cfg.smooth > 0 else value
            lrs.append(float(lr))
            losses.append(value)
            smoothed.append(smooth_value)
            best = min(best, smooth_value)
            if smooth_value > cfg.diverge_threshold * best:
                stopped_early = True
                break
    return summarize(lrs, losses, smoothed, stopped_early)


def summarize(lrs, losses, smoothed, stopped_early: bool = False) -> RangeTestResult:
    """A result from recorded curves (also for curves loaded from elsewhere); plain floats throughout."""
    lrs, losses, smoothed = ([float(v) for v in values] for values in (lrs, losses, smoothed))
    steep = steepest_index(lrs, smoothed) if lrs else None
    valley = valley_index(lrs, smoothed) if lrs else None
    return RangeTestResult(
        lrs=lrs, losses=losses, smoothed=smoothed,
        steepest_lr=None if steep is None else float(lrs[steep]),
        valley_lr=None if valley is None else float(lrs[valley]),
        stopped_early=stopped_early,
    )


# ---------------------------------------------------------------- plot

def plot_range_test(result: RangeTestResult, path: Union[str, Path], rule: Rule = "steepest") -> Path:
    """Loss vs lr (log x): raw loss faint, smoothed loss bold, both suggestions marked; PNG at dpi 120."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    marks = (("steepest", result.steepest_lr, "tab:red"), ("valley", result.valley_lr, "tab:green"))
    for name, lr, color in marks:
        if lr is not None:
            style = "-" if name == rule else "--"
            ax.axvline(lr, color=color, linestyle=style, linewidth=1.5, label=f"{name}: {lr:.2e}")
    if result.smoothed:
        # From the lowest loss to a little above the start: the divergent tail would squash the descent.
        low, high = min(min(result.smoothed), min(result.losses)), result.smoothed[0]
        ax.set_ylim(low - 0.1 * abs(high - low) - 1e-8, max(high, low) + 0.5 * abs(high - low) + 1e-8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    chosen = result.steepest_lr if rule == "steepest" else result.valley_lr
    suffix = f"suggested lr ({rule}) {chosen:.2e}" if chosen is not None else "no suggestion"
    ax.set_title(f"LR range test: {suffix}" + (" (stopped at divergence)" if result.stopped_early else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
