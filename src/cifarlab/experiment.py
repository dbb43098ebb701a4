"""From a config to a finished run directory: data, model, state, callbacks, fit, summary, report.

This is the Python API behind the CLI: `cifarlab.train("fmnist-quick", ["train.epochs=2"])` returns a
`Run` with its metrics, so it works the same from a notebook.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from cifarlab.config import Config, load_config, validate
from cifarlab.data.augment import build_augment
from cifarlab.data.loader import DeviceLoader
from cifarlab.data.sources import Dataset, Split, load_dataset
from cifarlab.errors import UserError
from cifarlab.registry import create_model
from cifarlab.runtime import Runtime, make_runtime
from cifarlab.training import callbacks as cb
from cifarlab.training.checkpoint import atomic_write_text, load_checkpoint_with_path, restore, versions
from cifarlab.training.loop import fit
from cifarlab.training.optim import GradStep, Schedule, build_optimizer
from cifarlab.training.state import TrainState


@dataclass
class Run:
    run_dir: Path
    config: Config
    summary: dict
    history: list[dict]

    @property
    def best_test_acc(self) -> float:
        return self.summary["best_test_acc"]


# ------------------------------------------------------------------------------------------ building

def load_data(data_cfg) -> Dataset:
    dataset = load_dataset(data_cfg.dataset, data_cfg.dir, download=data_cfg.download, **data_cfg.options)
    C = dataset.in_channels
    for key in ("mean", "std"):
        given = getattr(data_cfg, key)
        if given is not None and len(given) != C:
            raise UserError(f"data.{key} needs {C} values for {data_cfg.dataset} ({C}-channel images), got {given}")
    if data_cfg.std is not None and min(data_cfg.std) <= 0:
        raise UserError(f"data.std values must be positive, got {data_cfg.std}")
    train, test = _first(dataset.train, data_cfg.train_subset), _first(dataset.test, data_cfg.test_subset)
    return replace(dataset, train=train, test=test,
                   mean=tuple(data_cfg.mean or dataset.mean), std=tuple(data_cfg.std or dataset.std))


def _first(split: Split, count: Optional[int]) -> Split:
    return split if count is None else Split(split.images[:count], split.labels[:count])


def build_model(model_cfg, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(model_cfg.name, num_classes=num_classes, in_channels=in_channels,
                        norm=model_cfg.norm, dropout=model_cfg.dropout, **model_cfg.options)


def make_loaders(cfg: Config, dataset: Dataset, runtime: Runtime) -> tuple[DeviceLoader, DeviceLoader]:
    if cfg.train.batch_size > len(dataset.train.labels):
        raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                        f"{len(dataset.train.labels)} training images; use at most that many")
    if cfg.train.batch_size % runtime.dist.world_size:
        raise UserError(f"train.batch_size={cfg.train.batch_size} must divide evenly over "
                        f"{runtime.dist.world_size} processes")
    augment = build_augment(cfg.augment, dataset.image_size, dataset.in_channels, seed=cfg.seed)
    common = dict(device=runtime.device, mean=dataset.mean, std=dataset.std, seed=cfg.seed,
                  channels_last=runtime.channels_last, rank=runtime.dist.rank, world_size=runtime.dist.world_size)
    train = DeviceLoader(dataset.train.images, dataset.train.labels, batch_size=cfg.train.batch_size,
                         train=True, augment=augment, **common)
    test = DeviceLoader(dataset.test.images, dataset.test.labels, batch_size=cfg.train.eval_batch_size,
                        train=False, **common)
    return train, test


def build_state(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> TrainState:
    """A fresh TrainState; `cfg.schedule.lr_peak` must already be a number or None."""
    train_loader, test_loader = make_loaders(cfg, dataset, runtime)
    model = build_model(cfg.model, dataset.num_classes, dataset.in_channels)
    if hasattr(model, "init_whitening"):  # fastnet: whitening filters from the training patches
        sample = train_loader.make_batch(torch.arange(min(5000, train_loader.num_images), device=runtime.device))[0]
        model.init_whitening(sample.float().contiguous())
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = model.to(runtime.device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule, cfg.optim.lr, cfg.train.epochs, len(train_loader))
    ema = None
    if cfg.train.ema is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
    return TrainState(
        cfg=cfg, runtime=runtime, model=model, train_model=wrap_for_training(model, cfg, runtime),
        optimizer=optimizer, schedule=schedule,
        grad_step=GradStep(optimizer, runtime.precision.make_scaler(), cfg.optim.grad_clip),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
        train_loader=train_loader, test_loader=test_loader, run_dir=run_dir, ema=ema, classes=dataset.classes)


def wrap_for_training(model: nn.Module, cfg: Config, runtime: Runtime) -> nn.Module:
    wrapped = model
    if runtime.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
    return torch.compile(wrapped) if cfg.train.compile else wrapped


def default_callbacks(cfg: Config, run_dir: Path, is_main: bool) -> cb.Callbacks:
    callbacks: list[cb.Callback] = [cb.StepWindow(cfg.train.log_every_steps), cb.StopOnSignal()]
    if cfg.train.early_stop_patience:
        callbacks.append(cb.EarlyStop(cfg.train.early_stop_patience, cfg.train.early_stop_min_delta,
                                      cfg.checkpoint.monitor))
    if is_main:
        callbacks += [cb.Progress(cfg.output.progress), cb.CSVLogger(run_dir / "metrics.csv"),
                      cb.Checkpointer(run_dir / "checkpoints", cfg.checkpoint.every_epochs,
                                      cfg.checkpoint.every_steps, cfg.checkpoint.monitor)]
        if cfg.output.tensorboard:
            callbacks.append(cb.TensorBoard(run_dir / "tb"))
    return cb.Callbacks(callbacks)


def new_run_dir(cfg: Config) -> Path:
    root = Path(cfg.output.dir) / cfg.name
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        run_dir = root / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"cannot create run directory {run_dir}: {err.strerror}") from None
    raise UserError(f"too many runs started this second under {root}")


# ------------------------------------------------------------------------------------------ running

def train(config: Union[Config, str, None] = None, overrides: Sequence[str] = (), run_dir: Optional[Path] = None) -> Run:
    """Train a recipe name, YAML path or Config (plus `key=value` overrides) into a new run directory."""
    cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
    if isinstance(config, Config) and overrides:
        raise ValueError("pass overrides with a recipe name or path, not with a Config object")
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    _default_threads(cfg, runtime)
    dataset = load_data(cfg.data)
    created = run_dir is None and runtime.dist.is_main
    run_dir = Path(run_dir) if run_dir else (new_run_dir(cfg) if runtime.dist.is_main else None)
    run_dir = _shared_run_dir(run_dir, runtime)
    try:
        state = _prepare(cfg, runtime, dataset, run_dir)
    except BaseException:
        if created:  # a run that never started leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return _fit_and_finish(state, dataset)


def _prepare(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> TrainState:
    """Range test if asked, then the state; the run is announced only once nothing can be rejected."""
    extra = {}
    if cfg.schedule.lr_peak == "auto":
        from cifarlab.analysis.lr_search import find_peak_lr

        cfg, extra = find_peak_lr(cfg, runtime, dataset, run_dir)
    state = build_state(cfg, runtime, dataset, run_dir)
    state.extra.update(extra)
    if runtime.dist.is_main:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    _announce(f"run directory: {run_dir}\ndata: {dataset.name} ({dataset.origin}), "
              f"{len(dataset.train.labels)} train / {len(dataset.test.labels)} test images\n"
              f"device: {runtime.describe()}", runtime)
    return state


def resume(run_dir: Union[str, Path]) -> Run:
    """Continue a run from its last checkpoint, into the same run directory.

    Refuses (UserError, nothing written) a missing directory, one without a readable checkpoint, a run
    that already finished and a run that diverged (it would diverge again)."""
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give a folder like runs/<recipe>/<time>")
    if not checkpoint.exists() and not checkpoint.with_name("last.prev.pt").exists():
        raise UserError(f"{run_dir} has no checkpoints/last.pt to resume from")
    payload, used = load_checkpoint_with_path(checkpoint)
    cfg = validate(payload["config"])
    if payload["status"] == "completed" or payload["epoch"] >= cfg.train.epochs:
        raise UserError(f"run {run_dir} already finished ({payload['epoch']}/{cfg.train.epochs} epochs); "
                        f"nothing to resume — start a new run with `cifarlab train`")
    try:
        previous = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict) and previous.get("status") == "diverged":
        raise UserError(f"run {run_dir} diverged at step {previous.get('diverged_at', {}).get('step')}; resuming "
                        f"would diverge again — start a new run with a lower optim.lr (see `cifarlab lr-find`)")
    if payload["versions"].get("torch") != versions()["torch"]:
        print(f"warning: {used} was written with torch {payload['versions'].get('torch')}, this is "
              f"{versions()['torch']}; the resumed run may not match an uninterrupted one bit for bit",
              file=sys.stderr, flush=True)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    _default_threads(cfg, runtime)
    dataset = load_data(cfg.data)
    state = build_state(cfg, runtime, dataset, run_dir)
    restore(state, payload, used)
    state.last_checkpoint = {"path": str(used), "epoch": state.epoch, "step": state.step}
    _announce(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch_in_epoch} (step {state.step})", runtime)
    return _fit_and_finish(state, dataset)


def _fit_and_finish(state: TrainState, dataset: Dataset) -> Run:
    cfg, run_dir, runtime = state.cfg, state.run_dir, state.runtime
    started = time.perf_counter()
    fit(state, default_callbacks(cfg, run_dir, runtime.dist.is_main))
    summary = write_summary(state, time.perf_counter() - started)
    if runtime.dist.is_main:
        _announce(_closing_message(state), runtime)
        if cfg.output.report and state.history and state.status == "completed":
            from cifarlab.analysis.run_report import analyze_run

            report = analyze_run(run_dir, state.eval_model, dataset, cfg, autocast=runtime.precision.autocast,
                                 device=runtime.device)
            _announce(f"report: {report}", runtime)
    return Run(run_dir, cfg, summary, list(state.history))


def write_summary(state: TrainState, wall_seconds: float) -> dict:
    best = state.best("test_acc") or {}
    last = state.history[-1] if state.history else {}
    loader = state.train_loader
    per_epoch = min(len(loader) * loader.batch_size, loader.num_images)
    images = state.epoch * per_epoch + min(state.batch_in_epoch * loader.batch_size, loader.num_images)
    train_seconds = state.elapsed_seconds
    summary = {
        "recipe": state.cfg.name, "model": state.cfg.model.name, "dataset": state.cfg.data.dataset,
        "num_params": sum(p.numel() for p in state.model.parameters()),
        "epochs_completed": state.epoch, "epochs": state.cfg.train.epochs,
        "best_test_acc": best.get("test_acc"), "best_epoch": best.get("epoch"),
        "final_test_acc": last.get("test_acc"), "final_test_loss": last.get("test_loss"),
        "final_train_acc": last.get("train_acc"),
        "best_train_acc": max((row["train_acc"] for row in state.history), default=None),
        "wall_seconds": round(wall_seconds, 3), "train_seconds": round(train_seconds, 3),
        "train_images_per_second": round(images / train_seconds, 1) if train_seconds else None,
        "lr_peak": state.extra.get("lr_peak"), "precision": state.runtime.precision.name,
        "device": state.runtime.describe(), "versions": versions(), "status": state.status,
    }
    if "early_stop" in state.extra:
        summary["early_stop"] = state.extra["early_stop"]
    if "diverged_at" in state.extra:
        summary["diverged_at"] = state.extra["diverged_at"]
    if state.status in ("diverged", "interrupted"):
        # Where to go on from: the newest last.pt holding finite weights (never one saved after the blow-up).
        summary["last_good_checkpoint"] = state.last_checkpoint["path"] if state.last_checkpoint else None
    if state.status == "interrupted":
        summary["signal"], summary["signal_number"] = state.extra.get("signal"), state.extra.get("signal_number")
    if state.runtime.dist.is_main:
        atomic_write_text(state.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _closing_message(state: TrainState) -> str:
    run_dir = state.run_dir
    if state.status == "interrupted":
        return (f"stopped by {state.extra.get('signal', 'a signal')} at epoch {state.epoch + 1}, step {state.step}; "
                f"checkpoint saved. Resume with: cifarlab resume {run_dir}")
    if state.status == "diverged":
        where, saved = state.extra["diverged_at"], state.last_checkpoint
        good = (f"last good checkpoint: {saved['path']} (step {saved['step']}, epoch {saved['epoch']})" if saved
                else "no checkpoint was written before it")
        return (f"training diverged: non-finite loss at step {where['step']} with lr {where['lr']:.4g}; "
                f"{good}. Try a lower learning rate: `cifarlab lr-find {state.cfg.name}` (the LR range test) "
                f"suggests one")
    best = state.best("test_acc")
    if state.stop_reason == "early_stop":
        stop = state.extra["early_stop"]
        run_dir = f"{run_dir} (stopped early after epoch {stop['epoch']}: no improvement since epoch {stop['best_epoch']})"
    return f"done: best test accuracy {100 * best['test_acc']:.2f}% at epoch {best['epoch']} in {run_dir}"


def _announce(text: str, runtime: Runtime) -> None:
    if runtime.dist.is_main:
        print(text, file=sys.stderr, flush=True)


def _default_threads(cfg: Config, runtime: Runtime) -> None:
    # Several CPU processes on one machine: split the cores instead of oversubscribing them.
    if runtime.dist.enabled and runtime.device.type == "cpu" and not cfg.train.threads:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.dist.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _shared_run_dir(run_dir: Optional[Path], runtime: Runtime) -> Path:
    """Rank 0 names the run directory; the other ranks learn it."""
    if not runtime.dist.enabled:
        return run_dir
    box = [str(run_dir) if run_dir else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])


def evaluate_checkpoint(path: Union[str, Path], tta: bool = False) -> dict:
    """Test loss and accuracy of a checkpoint on its recipe's test split."""
    from cifarlab.training.checkpoint import load_model
    from cifarlab.training.loop import evaluate

    model, cfg, meta = load_model(Path(path))
    runtime = make_runtime(cfg.train.model_copy(update={"device": "auto"}), cfg.seed)
    dataset = load_data(cfg.data)
    if dataset.num_classes != len(meta["classes"]):
        raise UserError(f"checkpoint {path} has {len(meta['classes'])} classes but {cfg.data.dataset} has "
                        f"{dataset.num_classes}")
    dataset = replace(dataset, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    model = model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    _, test_loader = make_loaders(cfg, dataset, runtime)
    loss, acc = evaluate(model, test_loader, runtime.precision, tta)
    return {"checkpoint": str(path), "epoch": meta["epoch"], "test_loss": loss, "test_acc": acc,
            "images": test_loader.num_images, "tta": tta}
