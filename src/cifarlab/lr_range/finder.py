"""Learning-rate range test (Smith 2015, arXiv:1506.01186; popularised by fastai's `lr_find`).

Take `num_iter` training steps while the learning rate sweeps from `start_lr` to `end_lr`, record the
loss, and suggest a learning rate from the curve (the rules live in lr_suggest.py). The model and
optimizer are put back exactly as they were, so the test can run right before training.

Why our own rather than torch-lr-finder: its steepest-slope suggestion can land past the minimum on noisy
curves and at the calibration drop of an over-confident model (lr_range/suggest.py), its sweep is not our training
step (no GradScaler, no clipping), and it pulls in extra dependencies.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from cifarlab.atomic import atomic_write
from cifarlab.config import LRFindConfig
from cifarlab.errors import UserError
from cifarlab.lr_range.suggest import RULES, Rule, centred_smooth, descent_start_index, suggest_index

Batches = Union[Callable[[], tuple[torch.Tensor, torch.Tensor]], Iterator, Iterable]
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> loss, after one optimizer step

DEFAULT_RULE: Rule = LRFindConfig.model_fields["suggestion"].default
# OneCycle's initial lr = max_lr / div_factor; the range test chooses div_factor within these bounds.
DIV_FACTOR_BOUNDS = (5.0, 100.0)


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]  # bias-corrected exponential moving average of `losses` (lags; see lr_suggest)
    steepest_lr: Optional[float]
    valley_lr: Optional[float]
    stopped_early: bool  # True when the smoothed loss diverged before num_iter steps
    minimum_lr: Optional[float] = None  # minimum of the centred smoothing of `losses`
    rule: Rule = DEFAULT_RULE  # the rule asked for (lr_find.suggestion): what plots and messages show

    def suggestion(self, rule: Optional[Rule] = None) -> float:
        """The lr of `rule` (default: the rule this result was asked for)."""
        rule = rule or self.rule
        if rule not in RULES:
            raise UserError(f"lr_find.suggestion must be one of {', '.join(RULES)}, got {rule!r}")
        lr = getattr(self, f"{rule}_lr")
        if lr is None:
            raise UserError(
                f"the LR range test found no descending part of the loss curve that ends in a minimum over "
                f"{len(self.lrs)} steps (lr {self.lrs[0]:.2e}..{self.lrs[-1]:.2e}); widen "
                f"lr_find.start_lr/end_lr or raise num_iter" if self.lrs else
                "the LR range test recorded no finite loss; lower lr_find.start_lr"
            )
        return lr

    def suggestions(self) -> dict[str, Optional[float]]:
        """Every rule's lr (None where a rule finds none)."""
        return {rule: getattr(self, f"{rule}_lr") for rule in RULES}

    def descent_start_lr(self) -> Optional[float]:
        """The lr where the smoothed loss has fallen by 10 % of its total drop (after the skipped head)."""
        index = descent_start_index(self.smoothed)
        return None if index is None else self.lrs[index]

    def onecycle(self, rule: Optional[Rule] = None) -> tuple[float, float]:
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
        """The result as the file recorded it; files written before a rule existed keep their curves, so that
        rule's lr is computed from them."""
        computed = summarize(data["lrs"], data["losses"], data["smoothed"], data["stopped_early"],
                             data.get("rule", DEFAULT_RULE))
        return replace(computed, **{f"{rule}_lr": data[f"{rule}_lr"] for rule in RULES if f"{rule}_lr" in data})


def read_range_test(path: Union[str, Path]) -> Optional[RangeTestResult]:
    """A range test's lr_find.json (lr_range/search.save_range_test writes it), or None where there is none;
    a UserError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RangeTestResult.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"{str(path)!r} is not a range test's result ({type(err).__name__}: {err})") from None


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
               cfg: LRFindConfig, on_step: Optional[Callable[[float, float], None]] = None) -> RangeTestResult:
    """Sweep the lr (set on every param group), run `step` once per lr, record raw and smoothed losses,
    restore `model` and `optimizer`.

    `step(inputs, labels)` must do one whole optimizer step of `optimizer` on `model` and return the loss
    tensor: the range test should measure the step training will take (precision, loss scaling, clipping),
    not an approximation of it.

    Smoothing: avg = (1 - smooth) * avg + smooth * loss, reported as avg / (1 - (1 - smooth) ** step)
    (bias correction, so early values are not pulled towards 0). `smooth` is the weight of the newest
    loss: torch-lr-finder's `smooth_f` (0.05) and fastai's beta = 0.98 is smooth = 0.02; smooth = 0 means
    no smoothing. Stops early when the smoothed loss exceeds diverge_threshold x the best so far, or the
    loss is not finite. Batches must already be on the model's device. `on_step(lr, loss)`, if given, is
    called after each step (progress).
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
            if on_step is not None:
                on_step(float(lr), value)
            if smooth_value > cfg.diverge_threshold * best:
                stopped_early = True
                break
    return summarize(lrs, losses, smoothed, stopped_early, cfg.suggestion)


def summarize(lrs, losses, smoothed, stopped_early: bool = False, rule: Rule = DEFAULT_RULE) -> RangeTestResult:
    """A result from recorded curves (also for curves loaded from elsewhere); plain floats throughout."""
    lrs, losses, smoothed = ([float(v) for v in values] for values in (lrs, losses, smoothed))
    picked = {rule: suggest_index(rule, lrs, losses, smoothed) for rule in RULES}
    found = {f"{rule}_lr": None if index is None else lrs[index] for rule, index in picked.items()}
    return RangeTestResult(lrs=lrs, losses=losses, smoothed=smoothed, stopped_early=stopped_early, rule=rule,
                           **found)


# ---------------------------------------------------------------- plot

RULE_COLORS = {"minimum": "tab:red", "steepest": "tab:orange", "valley": "tab:green"}


def range_test_figure(result: RangeTestResult, rule: Optional[Rule] = None):
    """Loss vs lr (log x): raw loss faint, its centred smoothing bold, the sweep's EMA thin; the chosen
    lr a solid line labelled with its rule, the other rules' lrs dashed. A matplotlib Figure (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rule = rule or result.rule
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
    if len(result.lrs) >= 2:
        ax.plot(result.lrs, centred_smooth(result.lrs, result.losses), color="tab:blue", linewidth=2,
                label="smoothed loss (centred)")
    ax.plot(result.lrs, result.smoothed, color="tab:gray", linewidth=1, linestyle=":", label="EMA of loss (lags)")
    chosen = result.suggestions().get(rule)
    for name, lr in result.suggestions().items():
        if lr is not None and name != rule:
            ax.axvline(lr, color=RULE_COLORS[name], linestyle="--", linewidth=1, label=f"{name}: {lr:.2e}")
    if chosen is not None:
        ax.axvline(chosen, color=RULE_COLORS[rule], linewidth=2.5, label=f"chosen lr {chosen:.2e} (rule: {rule})")
    if result.smoothed:
        # From the lowest loss to a little above the start: the divergent tail would squash the descent.
        low, high = min(min(result.smoothed), min(result.losses)), result.smoothed[0]
        ax.set_ylim(low - 0.1 * abs(high - low) - 1e-8, max(high, low) + 0.5 * abs(high - low) + 1e-8)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    suffix = f"lr {chosen:.2e} by rule {rule!r}" if chosen is not None else f"no suggestion by rule {rule!r}"
    ax.set_title(f"LR range test: {suffix}" + (" (stopped at divergence)" if result.stopped_early else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_range_test(result: RangeTestResult, path: Union[str, Path], rule: Optional[Rule] = None) -> Path:
    """`range_test_figure` saved as a PNG at dpi 120; `rule` defaults to the result's own."""
    fig = range_test_figure(result, rule)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight"))
    return path
