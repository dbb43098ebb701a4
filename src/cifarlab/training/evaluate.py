"""The one evaluation path: eval mode, inference_mode, autocast, optional test-time augmentation.

The epoch-end test accuracy, `cifarlab eval`, the report's predictions, `predict` and Grad-CAM's class
choice all get their log-probabilities from `log_probs`, so one checkpoint has one accuracy.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model with neither."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` for the block, then every submodule's own train/eval mode put back."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield model.eval()
    finally:
        for module, training in modes.items():
            module.training = training


def log_probs(model: nn.Module, inputs: torch.Tensor, autocast: Callable = contextlib.nullcontext,
              tta: bool = False) -> torch.Tensor:
    """(B, K) float32 log-probabilities; with flip TTA the log of the mean of the image's and its mirror's
    softmax, computed in log space so that tiny probabilities never become log(0)."""
    with autocast():
        logits = model(inputs)
    out = F.log_softmax(logits.float(), dim=1)
    if not tta:
        return out
    with autocast():
        mirrored = F.log_softmax(model(inputs.flip(3)).float(), dim=1)
    return torch.logaddexp(out, mirrored) - math.log(2.0)


@torch.inference_mode()
def evaluate(model, loader, precision, tta: bool = False, dist=None) -> tuple[float, float]:
    """(mean loss, accuracy) over a split, summed on the device, one sync at the end."""
    totals = torch.zeros(3, dtype=torch.float64, device=loader.device)
    with eval_mode(model):
        for inputs, labels in loader:
            scores = log_probs(model, inputs, precision.autocast, tta)
            totals[0] += F.nll_loss(scores, labels, reduction="sum").double()
            totals[1] += (scores.argmax(1) == labels).sum()
            totals[2] += labels.shape[0]
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(totals)
    loss_sum, correct, n = totals.tolist()
    return loss_sum / n, correct / n
