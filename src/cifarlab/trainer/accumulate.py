"""Gradient accumulation (`train.accumulate: K`): one optimizer step's batch as K micro-batches.

The loader hands the loop one optimizer step's images (train.batch_size x K, trainer/build.py), and
`forward_backward` runs them through the model train.batch_size at a time, summing gradients. Each
micro-batch's mean loss is weighted by its share of the step's images, so the summed gradient is that
of the whole batch's mean loss: 1/K each for full batches, and still exact for a ragged last batch.
Under DDP the gradients are all-reduced only on the last micro-batch (`no_sync` on the others).

Checkpoints fall only between optimizer steps: the loop's unit stays one loader batch = one optimizer
step, so `state.progress.step`, `batch_in_epoch`, the schedule and every checkpoint count optimizer steps, and a
half-accumulated gradient never has to be saved (a signal mid-step is acted on when the step ends).
BatchNorm is the one thing that differs from a single batch of K x batch_size: it normalises each
micro-batch with that micro-batch's statistics, as it would in any run with that batch size.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from cifarlab.trainer.optim import GradStep


def micro_batches(inputs: torch.Tensor, labels: torch.Tensor, micro_size: int) -> list[tuple[torch.Tensor, ...]]:
    """`inputs`, `labels` in ceil(N / micro_size) micro-batches of near-equal size (views, no copy).

    Near-equal rather than micro_size and a remainder, so a ragged last batch never leaves a micro-batch
    of one image (BatchNorm cannot train on one)."""
    count = -(-inputs.shape[0] // micro_size)
    if count <= 1:
        return [(inputs, labels)]
    return list(zip(torch.tensor_split(inputs, count), torch.tensor_split(labels, count)))


def grad_sync(model: nn.Module, last: bool):
    """DDP all-reduces gradients in the backward of the last micro-batch only; a no-op without DDP."""
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel (compiled too: attribute forwarded)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def forward_backward(model: nn.Module, loss_fn: nn.Module, precision, grad_step: GradStep, inputs: torch.Tensor,
                     labels: torch.Tensor, micro_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the gradients, then forward and backward over the micro-batches of (inputs, labels), each
    loss weighted by its share of the images. Returns the batch's mean loss and its logits; with one
    micro-batch exactly the plain forward and backward (no extra kernel)."""
    parts = micro_batches(inputs, labels, micro_size)
    if len(parts) == 1:
        with precision.autocast():
            logits = model(inputs)
            loss = loss_fn(logits, labels)
        grad_step.backward(loss)
        return loss, logits
    total, all_logits = None, []
    for k, (micro_inputs, micro_labels) in enumerate(parts):
        share = micro_labels.shape[0] / labels.shape[0]
        with grad_sync(model, last=k == len(parts) - 1):  # forward and backward inside, as DDP asks
            with precision.autocast():
                logits = model(micro_inputs)
                loss = loss_fn(logits, micro_labels) * share
            grad_step.backward(loss, zero=k == 0)
        total = loss.detach() if total is None else total + loss.detach()
        all_logits.append(logits.detach())
    return total, torch.cat(all_logits)
