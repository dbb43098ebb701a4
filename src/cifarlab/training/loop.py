"""The training loop. Everything optional hangs off callbacks; precision lives in `runtime.precision`."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cifarlab.training.callbacks import Callback
from cifarlab.training.state import TrainState


def train_step(state: TrainState, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    with state.runtime.precision.autocast():
        logits = state.train_model(inputs)
        loss = state.loss_fn(logits, labels)
    state.grad_step(loss)
    state.schedule.after_step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    totals = state.epoch_meter.batch_totals(loss, logits, labels)
    state.epoch_meter.add(totals)
    state.window_meter.add(totals)
    # Remember the first non-finite loss (its 1-based step, as logged, and lr) on the device, without a
    # host sync; callbacks read it when they sync anyway.
    bad = ~torch.isfinite(loss.detach()) & (state.nonfinite_step < 0)
    state.nonfinite_lr.copy_(torch.where(bad, state.schedule.lr_used, state.nonfinite_lr))
    state.nonfinite_step.copy_(torch.where(bad, state.step + 1, state.nonfinite_step))


def train_epoch(state: TrainState, callbacks: Callback) -> None:
    state.train_model.train()
    for inputs, labels in state.train_loader.batches(state.epoch, start=state.batch_in_epoch):
        train_step(state, inputs, labels)
        state.step += 1
        state.batch_in_epoch += 1
        callbacks.on_step_end(state)
        if state.stop_reason:
            return


@torch.inference_mode()
def evaluate(model, loader, precision, tta: bool = False, dist=None) -> tuple[float, float]:
    """(mean loss, accuracy) over a split, summed on the device, one sync at the end."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=loader.device)
    for inputs, labels in loader:
        with precision.autocast():
            logits = model(inputs).float()
            if tta:  # average the probabilities of the image and its mirror, in log space (no log(0))
                mirrored = model(inputs.flip(3)).float()
                logits = torch.logaddexp(logits.log_softmax(1), mirrored.log_softmax(1)) - math.log(2)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += labels.shape[0]
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(totals)
    model.train(was_training)
    loss_sum, correct, n = totals.tolist()
    return loss_sum / n, correct / n


def end_epoch(state: TrainState, train_seconds: float, images: int) -> None:
    train_loss, train_acc = _reduced(state, state.epoch_meter)
    state.epoch_meter.reset()
    if state.runtime.dist.enabled:  # every rank evaluates with rank 0's BatchNorm statistics
        for buffer in state.eval_model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    test_loss, test_acc = evaluate(state.eval_model, state.test_loader, state.runtime.precision,
                                   state.cfg.train.tta, state.runtime.dist)
    state.epoch += 1
    state.batch_in_epoch = 0
    state.elapsed_seconds += train_seconds
    state.history.append({
        "epoch": state.epoch, "step": state.step, "lr": state.lr,
        "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
        "elapsed_seconds": state.elapsed_seconds, "images_per_second": images / max(train_seconds, 1e-9),
    })
    if not math.isfinite(train_loss):  # a huge test loss is overconfidence, not divergence
        state.stop_reason = "diverged"
        state.extra.setdefault("diverged_at", state.first_nonfinite() or {"step": state.step, "lr": state.lr})
    state.schedule.after_epoch(state.history[-1])


def _reduced(state: TrainState, meter) -> tuple[float, float]:
    if state.runtime.dist.enabled:
        torch.distributed.all_reduce(meter.totals)
    loss, acc, _ = meter.read()
    return loss, acc


def fit(state: TrainState, callbacks: Callback) -> TrainState:
    """Train until `train.epochs` or a stop reason (interrupted, diverged, early_stop)."""
    callbacks.on_fit_start(state)
    while state.epoch < state.cfg.train.epochs and not state.stop_reason:
        callbacks.on_epoch_start(state)
        first_batch, started = state.batch_in_epoch, time.perf_counter()
        train_epoch(state, callbacks)
        if state.stop_reason == "diverged" or (state.stop_reason and state.batch_in_epoch < state.steps_per_epoch):
            state.elapsed_seconds += time.perf_counter() - started
            break  # diverged, or interrupted mid-epoch: no evaluation of a partial or broken epoch
        batch, total = state.train_loader.batch_size, state.train_loader.num_images
        images = min(state.batch_in_epoch * batch, total) - min(first_batch * batch, total)
        end_epoch(state, time.perf_counter() - started, images)
        callbacks.on_epoch_end(state)
    state.status = {None: "completed", "interrupted": "interrupted", "diverged": "diverged",
                    "early_stop": "completed"}[state.stop_reason]
    callbacks.on_fit_end(state)
    return state
