"""An exponential moving average of the weights, updated with foreach ops and no host sync.

`torch.optim.swa_utils.AveragedModel` tests `bool(n_averaged == 0)` and `n_averaged > 0` on a device
tensor every update: two host waits per step on a GPU, which doubled `fast`'s step time on an H100
(bench/gpu_speed.py). This class computes the same average — the first update copies the weights,
every later one is `torch._foreach_lerp_(ema, model, 1 - decay)`, float buffers (BatchNorm statistics)
averaged like the parameters as with `use_buffers=True` — but decides "first update?" from a Python
counter mirrored from `n_averaged`, so nothing is read back from the device.

Differences from AveragedModel, on purpose:
- integer buffers (BatchNorm's `num_batches_tracked`) are copied from the model: AveragedModel's
  `trunc(decay * ema + (1 - decay) * model)` on integers freezes them after the first update and costs
  four kernels per BatchNorm layer every step.
- `every=k` updates on steps divisible by k with decay**k, so the average forgets at the same rate per
  training step as `every=1` (the one-step EMA applied k times to a constant model gives decay**k).

`state_dict()` has AveragedModel's keys (`module.<name>`, `n_averaged`), so checkpoints written with
either load into the other.
"""
from __future__ import annotations

import copy
import weakref

import torch
from torch import nn


class EMA(nn.Module):
    """`ema = EMA(model, decay, every)`; after each optimizer step `ema.update(model, step)`; eval `ema.module`."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA every must be a positive number of steps, got {every}")
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay, self.every = decay, every
        self.weight = 1.0 - decay**every  # lerp weight towards the model
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long, device=_device_of(model)))
        self.updates = 0  # host copy of n_averaged: what decides "first update" without a sync
        # The model the tensor lists below were taken from: a weak reference, because a Module attribute
        # would become a submodule (in state_dict, moved by .to()).
        self._source: weakref.ref | None = None
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Average `model` in: when `step` (optimizer steps done, a Python int) is a multiple of `every`,
        or always when no step is given. Launches one foreach lerp, one foreach copy and one add."""
        if step is not None and step % self.every:
            return
        if self._source is None or self._source() is not model:
            self._take_lists(model)
        ema_floats, model_floats = self._floats
        if self.updates == 0:
            torch._foreach_copy_(ema_floats, model_floats)
        else:
            torch._foreach_lerp_(ema_floats, model_floats, self.weight)
        if self._others[0]:
            torch._foreach_copy_(*self._others)
        self.n_averaged.add_(1)
        self.updates += 1

    # AveragedModel's name for the same call, so existing callers keep working.
    update_parameters = update

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # one read at load time, never during training
        self._source = None  # assign=True replaces the tensors the cached lists point at
        return result

    def _apply(self, fn, *args, **kwargs):
        self._source = None  # .to() / .cuda() may replace the averaged tensors
        return super()._apply(fn, *args, **kwargs)

    def _take_lists(self, model: nn.Module) -> None:
        pairs = list(zip(_tensors(self.module), _tensors(model), strict=True))
        for ema_t, model_t in pairs:
            if ema_t.shape != model_t.shape:
                raise ValueError(f"EMA of a different model: {tuple(ema_t.shape)} vs {tuple(model_t.shape)}")
        floating = [(e, m) for e, m in pairs if e.is_floating_point()]
        others = [(e, m) for e, m in pairs if not e.is_floating_point()]
        self._floats = ([e for e, _ in floating], [m for _, m in floating])
        self._others = ([e for e, _ in others], [m for _, m in others])
        self._source = weakref.ref(model)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, detached, in AveragedModel's order (use_buffers=True)."""
    return [t.detach() for t in (*model.parameters(), *model.buffers())]


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter((*model.parameters(), *model.buffers())), None)
    return first.device if first is not None else torch.device("cpu")
