"""The training loop. Everything optional hangs off callbacks; precision lives in `runtime.precision`.

The loop is the only code that synchronises with the device during an epoch (every
`train.log_every_steps` steps, at checkpoint steps and at the epoch end); there it publishes the logging
window (`on_window`) and judges divergence (`TrainState.check_finite`). It runs while
`TrainState.outcome`, the one place the run's outcome is decided, says "running".
"""
from __future__ import annotations

import math
import time

import torch

from cifarlab.models.inference import evaluate
from cifarlab.run.metrics import EpochRow
from cifarlab.run.outcomes import DivergedAt
from cifarlab.trainer.accumulate import forward_backward
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.outcome import DIVERGED, RUNNING
from cifarlab.trainer.state import TrainState


def train_step(state: TrainState, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimizer step on one batch, metrics accumulated on the device; returns the (device) loss.
    With `train.accumulate: K` the batch is K micro-batches of train.batch_size (trainer/accumulate.py)."""
    objects, progress = state.objects, state.progress  # every step: the parts, not the flat names (`Part`)
    micro_size = state.cfg.train.batch_size // state.runtime.dist.world_size
    loss, logits = forward_backward(objects.train_model, objects.loss_fn, state.runtime.precision, objects.grad_step,
                                    inputs, labels, micro_size)
    objects.grad_step.step()
    objects.schedule.after_step()
    if objects.lookahead is not None:  # may reset the weights to the slow ones (trainer/lookahead.py)
        objects.lookahead.update(objects.model, progress.step + 1, progress.epoch,
                                 epoch_end=progress.batch_in_epoch + 1 == len(objects.train_loader))
    if objects.ema is not None:  # foreach lerp every train.ema_every steps, no host sync (trainer/ema.py)
        objects.ema.update(objects.model, progress.step + 1)
    # Loss and correct predictions into this step's row on the device; lr, step and batch size stay on
    # the host. Read back, and judged finite or not, only at the loop's sync points (trainer/metrics.py).
    objects.metrics.record(loss, logits, labels, objects.schedule.lr_used, progress.step + 1)
    return loss


def _sync_if_due(state: TrainState) -> bool:
    """At the end of a logging window, publish it (`state.process.window`, one device sync; returns True) and judge
    the losses so far; at a checkpoint step judge the weights too, so that no callback saves broken ones
    (the epoch end judges both in `end_epoch`). Weights are checked only where they may be saved: a
    non-finite weight shows up as a non-finite loss one step later anyway."""
    progress, every_steps = state.progress, state.cfg.checkpoint.every_steps
    step, mid_epoch = progress.step, progress.batch_in_epoch < state.steps_per_epoch
    saving = bool(every_steps and step % every_steps == 0) and mid_epoch
    published = step % state.cfg.train.log_every_steps == 0 or not mid_epoch
    if published:
        loss, acc = state.objects.metrics.read_window()  # note: a CPU-GPU sync point, once per window
        state.process.window = EpochRow(epoch=progress.epoch + 1, step=step, lr=state.lr, train_loss=loss,
                                        train_acc=acc, kind="step")
    elif not saving:
        return False
    state.check_finite(weights=saving)
    if saving:  # every rank's sums into the checkpoint's (DDP; trainer/metrics.py)
        state.objects.metrics.share_epoch()
    return published


def _synced_clock(state: TrainState) -> float:
    if state.runtime.device.type == "cuda":
        torch.cuda.synchronize(state.runtime.device)
    return time.perf_counter()


def train_epoch(state: TrainState, callbacks: Callback) -> float:
    """Train the rest of the epoch; returns the seconds of it that were compile warm-up."""
    progress, process = state.progress, state.process
    state.objects.train_model.train()
    compiling = 0.0
    for inputs, labels in state.objects.train_loader.batches(progress.epoch, start=progress.batch_in_epoch):
        if process.compile_warmup_steps:  # synchronised timing only during the warm-up steps
            started = _synced_clock(state)
            train_step(state, inputs, labels)
            compiling += _synced_clock(state) - started
            process.compile_warmup_steps -= 1
        else:
            train_step(state, inputs, labels)
        progress.step += 1
        progress.batch_in_epoch += 1
        if _sync_if_due(state):
            callbacks.on_window(state)
        callbacks.on_step_end(state)
        if state.stop_now:  # interrupted or diverged; an early stop waits for the end of the epoch
            break
    progress.compile_seconds += compiling
    return compiling


def end_epoch(state: TrainState, train_seconds: float, images: int, compile_seconds: float = 0.0) -> None:
    reduce = torch.distributed.all_reduce if state.runtime.dist.enabled else None
    train_loss, train_acc = state.objects.metrics.read_epoch(reduce)
    if state.runtime.dist.enabled:  # every rank evaluates with rank 0's BatchNorm statistics
        for buffer in state.eval_model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    scores = {}
    progress_mode = state.cfg.output.progress if state.runtime.dist.is_main else "none"
    for split, loader in (("val", state.objects.val_loader), ("test", state.objects.test_loader)):
        if loader is not None:
            scores[f"{split}_loss"], scores[f"{split}_acc"] = evaluate(
                state.eval_model, loader, state.runtime.precision, state.cfg.train.tta, state.runtime.dist,
                progress_mode, f"{split} evaluation")
    progress = state.progress
    progress.epoch += 1
    progress.batch_in_epoch = 0
    state.process.epoch_open = False
    progress.elapsed_seconds += train_seconds
    images_per_second = images / max(train_seconds, 1e-9)
    progress.history.append(EpochRow(
        epoch=progress.epoch, step=progress.step, lr=state.lr, train_loss=train_loss, train_acc=train_acc, **scores,
        elapsed_seconds=progress.elapsed_seconds, images_per_second=images_per_second,
        mfu=state.speed.mfu(images_per_second) if state.speed is not None else None,
        compile_seconds=compile_seconds or None, kind="epoch",
    ))
    # A huge test loss is overconfidence, not divergence: only the training loss and the weights count.
    if math.isfinite(train_loss):
        state.check_finite(weights=True)
    elif state.check_finite(weights=False):
        state.diverge(DivergedAt(state.progress.step, state.lr))
    state.objects.schedule.after_epoch(progress.history[-1])


def fit(state: TrainState, callbacks: Callback) -> TrainState:
    """Train until `state.outcome` is no longer running: all `train.epochs` done, an early stop at the end
    of an epoch, an interrupt or a divergence. A callback that raises ends the fit: every callback's
    `on_exception` runs (e.g. the signal handlers are put back), then the error goes on to the caller."""
    state.process.started = time.perf_counter()
    try:
        callbacks.on_fit_start(state)
        while state.outcome.kind == RUNNING:
            state.process.epoch_open = True
            callbacks.on_epoch_start(state)
            first_batch, started = state.progress.batch_in_epoch, time.perf_counter()
            compiling = train_epoch(state, callbacks)
            seconds = time.perf_counter() - started - compiling
            epoch_unfinished = state.progress.batch_in_epoch < state.steps_per_epoch
            if state.stop_now and (state.outcome.kind == DIVERGED or epoch_unfinished):
                state.progress.elapsed_seconds += seconds
                break  # diverged, or interrupted mid-epoch: no evaluation of a partial or broken epoch
            batch, total = state.objects.train_loader.batch_size, state.objects.train_loader.num_images
            images = min(state.progress.batch_in_epoch * batch, total) - min(first_batch * batch, total)
            end_epoch(state, seconds, images, compiling)
            callbacks.on_epoch_end(state)
        state.process.epoch_open = False
        state.check_finite(weights=True)
        callbacks.on_fit_end(state)
    except BaseException as error:
        callbacks.on_exception(state, error)
        raise
    return state
