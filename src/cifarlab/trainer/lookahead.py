"""Lookahead weight averaging as airbench94 does it (Jordan 2024, arXiv:2404.00498; Zhang et al. 2019).

From epoch `start_epoch` on, every `every` optimizer steps the slow weights move towards the model's,
`slow += (1 - rho) * (model - slow)`, and the model is reset to them; `rho = decay**every *
(step / planned_steps)**power` grows from 0 (the model moves freely early on) to `decay**every` (strong
averaging at the end). At each epoch end the model takes the slow weights, so what is evaluated and
saved is the average. Every floating-point entry of the state dict takes part (BatchNorm statistics
too), as in airbench94.

Unlike an EMA (`train.ema`), which only watches the training, this changes the trajectory. Two foreach
kernels per update, Python numbers only: no host sync. The slow weights are part of the checkpoint, so
a resumed run continues exactly.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Lookahead:
    def __init__(self, every: int, decay: float, power: float, start_epoch: int, planned_steps: int):
        self.every, self.decay, self.power, self.start_epoch = every, decay, power, start_epoch
        self.planned_steps = max(1, planned_steps)
        self.slow: Optional[list[torch.Tensor]] = None  # None until the first update after start_epoch

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, epoch: int, epoch_end: bool) -> None:
        """After optimizer step `step` (1-based) of epoch `epoch` (0-based); `epoch_end`: its last step."""
        due = step % self.every == 0
        if epoch < self.start_epoch or not (due or (epoch_end and self.slow is not None)):
            return
        fast = _floats(model)
        if due and self.slow is None:
            self.slow = [t.clone() for t in fast]
        elif due:
            progress = min(1.0, step / self.planned_steps)  # a run extended past its plan keeps rho's end value
            rho = self.decay**self.every * progress**self.power
            torch._foreach_lerp_(self.slow, fast, 1.0 - rho)
            torch._foreach_copy_(fast, self.slow)
        if epoch_end:
            torch._foreach_copy_(fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": None if self.slow is None else [t.detach().cpu() for t in self.slow]}

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """The slow weights of a checkpoint, checked against `model`'s floating-point state."""
        slow = state["slow"]
        if slow is None:
            self.slow = None
            return
        fast = _floats(model)
        if not isinstance(slow, list) or len(slow) != len(fast) or any(
                not torch.is_tensor(s) or s.shape != f.shape for s, f in zip(slow, fast)):
            raise ValueError(f"lookahead weights do not match the model ({len(fast)} floating-point tensors)")
        self.slow = [s.to(device=f.device, dtype=f.dtype) for s, f in zip(slow, fast)]


def _floats(model: nn.Module) -> list[torch.Tensor]:
    """The model's floating-point state (parameters and BatchNorm statistics), as tensors that share its storage."""
    return [t for t in model.state_dict().values() if t.is_floating_point()]
