"""The one evaluation path: eval mode, inference_mode, autocast, optional test-time augmentation.

The epoch-end test accuracy, `cifarlab eval`, the report's predictions, `predict` and Grad-CAM's class
choice all get their log-probabilities from `log_probs`, so one checkpoint has one accuracy.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Optional, Union

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


def _views(inputs: torch.Tensor, tta: Union[str, bool, None]) -> list[tuple[torch.Tensor, float]]:
    """(view, weight) pairs whose weights sum to 1. flip: the image and its mirror, 1/2 each.
    flip_translate (airbench94's TTA level 2): those two at 1/4 each, plus the mirror pair of the image
    shifted one pixel up-left and down-right (reflect padding) at 1/8 each."""
    if not tta:
        return [(inputs, 1.0)]
    if tta is True or tta == "flip":
        return [(inputs, 0.5), (inputs.flip(3), 0.5)]
    if tta != "flip_translate":
        raise ValueError(f"tta must be None, 'flip' or 'flip_translate', got {tta!r}")
    H, W = inputs.shape[-2:]
    padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :H, :W], padded[:, :, 2:, 2:]]
    return [(inputs, 0.25), (inputs.flip(3), 0.25)] + [(view, 0.125) for s in shifted for view in (s, s.flip(3))]


def log_probs(model: nn.Module, inputs: torch.Tensor, autocast: Callable = contextlib.nullcontext,
              tta: Union[str, bool, None] = None) -> torch.Tensor:
    """(B, K) float32 log-probabilities; with TTA the log of the weighted mean of the views' softmaxes,
    computed in log space so that tiny probabilities never become log(0)."""
    scores = []
    for view, weight in _views(inputs, tta):
        with autocast():
            logits = model(view)
        scores.append(F.log_softmax(logits.float(), dim=1) + math.log(weight))
    return scores[0] if len(scores) == 1 else torch.stack(scores).logsumexp(0)


@torch.inference_mode()
def evaluate(model, loader, precision, tta: Union[str, bool, None] = None, dist=None,
             progress: str = "none", what: str = "evaluation", collect: Optional[list] = None) -> tuple[float, float]:
    """(mean loss, accuracy) over a split, summed on the device, one sync at the end. `progress` is an
    `output.progress` mode: an evaluation that takes long (a big model on a CPU) says how far it is.
    `collect`: a list each batch's (log-probabilities, labels) is appended to, on the device, for metrics
    beyond accuracy (`cifarlab eval`'s top-5 and calibration); the epoch-end evaluation keeps none."""
    from cifarlab.progress import PhaseProgress

    totals = torch.zeros(3, dtype=torch.float64, device=loader.device)
    with eval_mode(model), PhaseProgress(what, len(loader), "batches", progress, announce=False) as shown:
        for inputs, labels in loader:
            scores = log_probs(model, inputs, precision.autocast, tta)
            totals[0] += F.nll_loss(scores, labels, reduction="sum").double()
            totals[1] += (scores.argmax(1) == labels).sum()
            totals[2] += labels.shape[0]
            if collect is not None:
                collect.append((scores, labels))
            shown.update()  # batches queued, not finished: no sync with the device
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(totals)
    loss_sum, correct, n = totals.tolist()
    return loss_sum / n, correct / n
