"""From a validated config to the pieces a run is made of: dataset, loaders, model, `TrainState`, callbacks.

The run lifecycle (`cifarlab.experiment`), the range test and the benchmarks all build through here, so
a run, its range test and its benchmark train exactly the same model on exactly the same batches.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import eval_loader, make_loaders
from cifarlab.errors import UserError
from cifarlab.models.registry import build_model
from cifarlab.run import layout
from cifarlab.runtime import Runtime
from cifarlab.trainer.callbacks import Callback, Callbacks
from cifarlab.trainer.callbacks.model_epochs import ModelEpochs
from cifarlab.trainer.callbacks.stopping import EarlyStop, StopOnSignal
from cifarlab.trainer.ema import EMA
from cifarlab.trainer.lookahead import Lookahead
from cifarlab.trainer.metrics import StepMetrics
from cifarlab.trainer.optim import GradStep, Schedule, build_optimizer
from cifarlab.trainer.state import COMPILE_WARMUP_STEPS, ProcessValues, TrainObjects, TrainState
from cifarlab.trainer.writers.checkpointer import Checkpointer
from cifarlab.trainer.writers.csv_logger import CSVLogger
from cifarlab.trainer.writers.progress_printer import ProgressPrinter
from cifarlab.trainer.writers.tensorboard_logger import TensorBoard


def check_model_input(model_cfg, dataset: Dataset):
    """Refuse, before a run directory exists, images too small for the model (a 4x4 image through three
    poolings has no pixels left). Shapes are propagated on the meta device (no memory, no compute); a
    failure there is confirmed by a real forward of one image on the CPU, since a user's model may do
    things meta tensors cannot (`.item()`). Returns (what the model returned, for how many images): 2 meta images
    or 1 real one."""
    C, size = dataset.in_channels, dataset.image_size
    try:
        with torch.device("meta"):
            model = build_model(model_cfg, dataset.num_classes, C).eval()
            output = model(torch.empty(2, C, size, size))
        _check_trainable(model_cfg.name, model)
        return output, 2
    except UserError:
        raise
    except Exception:  # confirmed or dismissed below
        pass
    try:
        model = build_model(model_cfg, dataset.num_classes, C).eval()
    except UserError:
        raise
    except Exception as err:  # e.g. a user's factory given options it does not take
        raise UserError(f"model {model_cfg.name!r} could not be built with model.options={dict(model_cfg.options)} "
                        f"({_reason(err)}); give the options its factory takes") from None
    _check_trainable(model_cfg.name, model)
    try:
        with torch.no_grad():
            return model(torch.zeros(1, C, size, size)), 1
    except Exception as err:
        reason = _reason(err)
        if any(word in reason.lower() for word in SIZE_WORDS):
            raise UserError(f"{dataset.name} images are {size}x{size}, too small for model {model_cfg.name!r} "
                            f"({reason}); use larger images (e.g. data.options={{image_size: 32}} for a folder) "
                            f"or a model for small images") from None
        raise UserError(f"model {model_cfg.name!r} fails on one image of this data, shape (1, {C}, {size}, {size}) "
                        f"({C} channels, {size}x{size}): {reason}") from None


# What torch says when an image is too small for a network's poolings and kernels; any other failure of a
# forward pass (a channel count, the user's own code) is reported as itself, not as a size
SIZE_WORDS = ("too small", "kernel size", "output size", "smaller than", "non-positive", "more than 1 value")


def _check_trainable(name: str, model) -> None:
    """A model without a trainable parameter fails in the first backward pass, after the run directory exists."""
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise UserError(f"model {name!r} has no trainable parameters (none with requires_grad); a network to "
                        f"train needs some")


def _reason(err: Exception) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def monitors(cfg: Config, has_val: bool) -> tuple[str, str]:
    """(what selects best.pt and early stopping, what a plateau schedule watches): validation metrics
    when there is a validation split, test metrics otherwise, unless the config names them."""
    chosen = (cfg.checkpoint.selecting_metric(has_val), cfg.schedule.watched_metric(has_val))
    for key, value in zip(("checkpoint.monitor", "schedule.monitor"), chosen):
        if value.startswith("val_") and not has_val:
            raise UserError(f"{key}={value} needs a validation split; set data.val_split (e.g. 0.1) "
                            f"or monitor a test or train metric")
    return chosen


def build_state(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> TrainState:
    """A fresh TrainState; `cfg.schedule.lr_peak` must already be a number or None."""
    train_loader, test_loader = make_loaders(cfg, dataset, runtime)
    val_loader = eval_loader(cfg, dataset.val, dataset, runtime) if dataset.val is not None else None
    monitor, schedule_monitor = monitors(cfg, val_loader is not None)
    model = build_model(cfg.model, dataset.num_classes, dataset.in_channels)
    if hasattr(model, "init_whitening"):  # fastnet: whitening filters from the training patches
        sample = train_loader.make_batch(torch.arange(min(5000, train_loader.num_images), device=runtime.device))[0]
        model.init_whitening(sample.float().contiguous())
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = model.to(runtime.device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule.model_copy(update={"monitor": schedule_monitor}), cfg.optim.lr,
                        cfg.schedule.planned_epochs or cfg.train.epochs, len(train_loader))
    ema = EMA(model, cfg.train.ema, cfg.train.ema_every) if cfg.train.ema is not None else None
    ahead = cfg.train.lookahead
    lookahead = None if ahead is None else Lookahead(ahead.every, ahead.decay, ahead.power, ahead.start_epoch,
                                                     schedule.planned_steps)
    # Room in the step metrics for the steps between two syncs (it grows if a caller takes more).
    metrics = StepMetrics(runtime.device, capacity=min(cfg.train.log_every_steps, len(train_loader)) + 1,
                          reduce=torch.distributed.all_reduce if runtime.dist.enabled else None,
                          main=runtime.dist.is_main)
    objects = TrainObjects(
        model=model, train_model=wrap_for_training(model, cfg, runtime), optimizer=optimizer, schedule=schedule,
        grad_step=GradStep(optimizer, runtime.precision.make_scaler(), cfg.optim.grad_clip),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
        train_loader=train_loader, test_loader=test_loader, metrics=metrics, val_loader=val_loader, ema=ema,
        lookahead=lookahead)
    return TrainState(cfg=cfg, runtime=runtime, objects=objects, run_dir=run_dir, monitor=monitor,
                      classes=dataset.classes, data_fingerprint=dataset.fingerprint,
                      process=ProcessValues(compile_warmup_steps=COMPILE_WARMUP_STEPS if cfg.train.compile else 0))


def wrap_for_training(model: nn.Module, cfg: Config, runtime: Runtime) -> nn.Module:
    wrapped = model
    if runtime.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    mode = cfg.train.compile
    if mode is None:
        return wrapped
    return torch.compile(wrapped, mode=None if mode == "default" else mode)


def default_callbacks(cfg: Config, run_dir: Path, is_main: bool) -> Callbacks:
    callbacks: list[Callback] = [ModelEpochs(), StopOnSignal()]
    if cfg.train.early_stop_patience:
        callbacks.append(EarlyStop(cfg.train.early_stop_patience, cfg.train.early_stop_min_delta))
    if is_main:
        callbacks += [ProgressPrinter(cfg.output.progress), CSVLogger(run_dir / layout.METRICS),
                      Checkpointer(run_dir / layout.CHECKPOINTS, cfg.checkpoint.every_epochs,
                                   cfg.checkpoint.every_steps, cfg.output.keep)]
        if cfg.output.tensorboard:
            callbacks.append(TensorBoard(run_dir / layout.TENSORBOARD))
        if cfg.output.mlflow:
            from cifarlab.trainer.writers.mlflow_logger import MLflowLogger

            callbacks.append(MLflowLogger(run_dir, cfg.output.mlflow_uri))
        if cfg.output.wandb:
            from cifarlab.trainer.writers.wandb_logger import WandbLogger

            callbacks.append(WandbLogger(run_dir, cfg.output.wandb_project))
    return Callbacks(callbacks)
