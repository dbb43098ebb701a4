"""The run lifecycle: a config in, a finished run directory out (state, fit, summary, report), or a
run directory continued from its last checkpoint. The pieces are built in `training/build.py`.

This is the Python API behind the CLI: `cifarlab.train("fmnist-quick", ["train.epochs=2"])` returns a
`Run` with its metrics, so it works the same from a notebook.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from cifarlab.atomic import atomic_write_text
from cifarlab.config import Config, load_config, validate
from cifarlab.data.checks import check_same_data
from cifarlab.data.dataset import Dataset
from cifarlab.errors import UserError
from cifarlab.run import layout
from cifarlab.run.checkpoint import check_payload, load_checkpoint_with_path, versions
from cifarlab.run.lock import RunLock
from cifarlab.run.records import Summary, read_summary
from cifarlab.run.records import write_summary as write_summary_file
from cifarlab.runtime import Runtime, is_rank_zero, make_runtime
from cifarlab.training.build import ARRAYS, build_state, check_model_input, default_callbacks, load_data
from cifarlab.training.callbacks import Callback
from cifarlab.training.checkpoint import restore
from cifarlab.training.checkpointer import mark_best_completed
from cifarlab.training.loop import fit
from cifarlab.training.preflight import check_integrations
from cifarlab.training.sizing import few_steps_warning, size_to_data
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

    @property
    def status(self) -> str:
        """completed | interrupted | diverged. SIGINT/SIGTERM during `train` finish the step, save a
        checkpoint and return here with "interrupted" (no exception): check it when looping over runs."""
        return self.summary["status"]


# ------------------------------------------------------------------------------------------ running

def train(config: Union[Config, str, None] = None, overrides: Sequence[str] = (), run_dir: Optional[Path] = None,
          data=None, callbacks: Sequence[Callback] = ()) -> Run:
    """Train a recipe name, YAML path or Config (plus `key=value` overrides) into a new run directory.

    `data`: images from Python instead of `data.dataset` — `(x_train, y_train, x_test, y_test[, classes])`,
    a dict of those, or a Dataset (see `cifarlab.data.arrays`); the run then records `data.dataset: arrays`.
    `callbacks`: your own `Callback`s, called after cifarlab's at each hook (see training/callbacks.py)."""
    cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
    if isinstance(config, Config) and overrides:
        raise ValueError("pass overrides with a recipe name or path, not with a Config object")
    from cifarlab.models.registry import import_user_modules

    import_user_modules(cfg.model.module)  # the user's recipe names it: their model registers itself
    if cfg.output.wandb:
        from cifarlab.training.wandb_logger import require_wandb

        require_wandb()
    source = _arrays(data)
    if source is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": ARRAYS})})
    if run_dir is None:
        layout.check_run_name(cfg.name)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    _default_threads(cfg, runtime)
    cfg, dataset = size_to_data(cfg, source)  # `auto` batch size, epochs, val split -> numbers
    check_model_input(cfg.model, dataset)
    check_integrations(cfg.output)
    if cfg.model.init_from:  # its file and fit are checked on a CPU copy now, before the run directory exists
        from cifarlab.models.registry import build_model
        from cifarlab.training.warmstart import init_from_checkpoint

        init_from_checkpoint(build_model(cfg.model, dataset.num_classes, dataset.in_channels), cfg.model,
                             dataset.classes, dataset.in_channels)
    if run_dir is not None and runtime.dist.is_main:
        _refuse_used_run_dir(Path(run_dir))
    created = run_dir is None and runtime.dist.is_main
    run_dir = Path(run_dir) if run_dir else (layout.new_run_dir(cfg.output.dir, cfg.name)
                                             if runtime.dist.is_main else None)
    run_dir = _shared_run_dir(run_dir, runtime)
    lock = RunLock(run_dir)
    try:
        if runtime.dist.is_main:  # held until the run is over; the kernel drops it if the process dies
            lock.acquire()
        state = _prepare(cfg, runtime, dataset, run_dir)
    except BaseException:
        lock.release()
        if created:  # a run that never started leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with lock:
        return _fit_and_finish(state, dataset, callbacks)


def _refuse_used_run_dir(run_dir: Path) -> None:
    """`train(run_dir=...)` starts a run: into a new or empty folder, never over files already there (an
    earlier run's checkpoints and metrics would be overwritten or mixed with the new ones)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir {run_dir} is a file; give a new or empty folder")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        hint = (f"; continue that run with cifarlab.resume({str(run_dir)!r})"
                if (run_dir / layout.CONFIG).exists() else "")
        raise UserError(f"run_dir {run_dir} is not empty: a new run goes into a new or empty folder{hint}")


def _arrays(data) -> Optional[Dataset]:
    """`data=` of `train`/`resume` as a validated Dataset, or None when the config names the data."""
    if data is None:
        return None
    from cifarlab.data.arrays import as_dataset

    return as_dataset(data)


def _prepare(cfg: Config, runtime: Runtime, dataset: Dataset, run_dir: Path) -> TrainState:
    """Range test if asked, then the state; the run is announced only once nothing can be rejected."""
    source = _lr_peak_source(cfg)
    if cfg.output.mlflow:
        from cifarlab.training.mlflow_logger import require_mlflow

        require_mlflow()
    if cfg.schedule.lr_peak == "auto":
        from cifarlab.lr_range.search import find_peak_lr

        cfg = find_peak_lr(cfg, runtime, dataset, run_dir)
    state = build_state(cfg, runtime, dataset, run_dir)
    if cfg.model.init_from:  # a new run from trained weights; an EMA copies them at its first update
        from cifarlab.training.warmstart import init_from_checkpoint

        _announce(init_from_checkpoint(state.model, cfg.model, state.classes, dataset.in_channels), runtime)
    onecycle_peak = cfg.schedule.name == "onecycle" and cfg.schedule.lr_peak
    state.progress.lr_peak = cfg.schedule.lr_peak if onecycle_peak else cfg.optim.lr
    state.progress.lr_peak_source = source
    if runtime.dist.is_main:
        atomic_write_text(run_dir / layout.CONFIG, cfg.to_yaml())
    _announce(f"run directory: {run_dir}\n{data_line(dataset)}\ndevice: {runtime.describe()}", runtime)
    optimizer_steps = -(-state.steps_per_epoch // cfg.train.accumulate)  # micro-batches -> optimizer steps
    warning = few_steps_warning(optimizer_steps, cfg.train.epochs)
    if warning:
        _announce(warning, runtime)
    return state


def data_line(dataset: Dataset) -> str:
    """`data: fashion_mnist, 60,000 train / 10,000 test images, from <origin>`: counts first, then where."""
    val = f" / {len(dataset.val.labels):,} validation" if dataset.val is not None else ""
    return (f"data: {dataset.name}, {len(dataset.train.labels):,} train{val} / {len(dataset.test.labels):,} test "
            f"images, from {dataset.origin}")


def _lr_peak_source(cfg: Config) -> str:
    """How the run's peak learning rate is chosen, for summary.json."""
    if cfg.schedule.name != "onecycle" or cfg.schedule.lr_peak is None:
        return "optim.lr"
    if cfg.schedule.lr_peak == "auto":
        return f"range test (lr_find.suggestion={cfg.lr_find.suggestion})"
    return "schedule.lr_peak"


def resume(run_dir: Union[str, Path], data=None, callbacks: Sequence[Callback] = (),
           epochs: Optional[int] = None) -> Run:
    """Continue a run from its last checkpoint, into the same run directory (`data` and `callbacks` as
    for `train`; a run trained on arrays needs its arrays again). `epochs=N` extends the run, finished or
    not, to N epochs in all (see `extend_config` for the schedule of the added epochs).

    Refuses (UserError, nothing written) a missing directory, one without a readable checkpoint, a run
    another process is training, a checkpoint whose contents do not hold up (`check_payload`), a run that
    already finished and a run that diverged (it would diverge again). A run whose last.pt says it finished
    but whose summary.json is missing or older (a kill between the final checkpoint and the summary) gets
    its summary.json, best.pt status and report rebuilt from the checkpoint, without training."""
    run_dir = Path(run_dir)
    checkpoint = layout.checkpoint_path(run_dir, layout.LAST)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give a folder like runs/<recipe>/<time>")
    if not checkpoint.exists() and not layout.previous_path(checkpoint).exists():
        raise UserError(f"{run_dir} has no {layout.CHECKPOINTS}/{layout.LAST} to resume from")
    # Taken before reading: a trainer still at work is the reason to give, not its half-way files. Rank 0
    # holds it for all ranks of a torchrun job (the others would find it taken).
    lock = RunLock(run_dir)
    if is_rank_zero():
        lock.acquire()
    with lock:
        return _resume_locked(run_dir, checkpoint, data, callbacks, epochs)


def _resume_locked(run_dir: Path, checkpoint: Path, data, callbacks: Sequence[Callback],
                   epochs: Optional[int]) -> Run:
    payload, used = load_checkpoint_with_path(checkpoint)
    cfg = check_payload(payload, used, resume=True)  # all read below is checked before anything is written
    if epochs is not None:
        cfg = extend_config(cfg, payload["epoch"], epochs)
    check_integrations(cfg.output, run_dir)  # before config.yaml is rewritten (--epochs) or training goes on
    try:
        previous = read_summary(run_dir, required=False) or Summary()
    except UserError:
        previous = Summary()
    finished = epochs is None and (payload["status"] == "completed" or payload["epoch"] >= cfg.train.epochs)
    if finished and previous.status == "completed" and previous.epochs_completed == payload["epoch"]:
        raise UserError(f"run {run_dir} already finished ({payload['epoch']}/{cfg.train.epochs} epochs); "
                        f"nothing to resume — extend it with `cifarlab resume {run_dir} --epochs N` "
                        f"or start a new run with `cifarlab train`")
    if not finished and "diverged" in (previous.status, payload["status"]):
        step = previous.diverged_at.get("step") if isinstance(previous.diverged_at, dict) else None
        raise UserError(f"run {run_dir} diverged at step {step}; resuming "
                        f"would diverge again — start a new run with a lower optim.lr (see `cifarlab lr-find`)")
    written_with = payload.get("versions", {}).get("torch")
    if written_with != versions()["torch"]:
        print(f"warning: {used} was written with torch {written_with}, this is "
              f"{versions()['torch']}; the resumed run may not match an uninterrupted one bit for bit",
              file=sys.stderr, flush=True)
    runtime = make_runtime(cfg.train, cfg.seed, cfg.deterministic)
    _default_threads(cfg, runtime)
    dataset = load_data(cfg.data, cfg.seed, _arrays(data))
    check_same_data(payload["classes"], payload.get("data_fingerprint"), dataset, ("train", "val", "test"), "resumed")
    state = build_state(cfg, runtime, dataset, run_dir)
    restore(state, payload, used)
    state.process.last_checkpoint = {"path": str(used), "epoch": state.epoch, "step": state.step}
    if finished:
        # The final last.pt was written but the process died before summary.json (which needs the whole
        # run): last.pt is the truth, so finish the bookkeeping from it instead of refusing.
        if state.epoch < cfg.train.epochs and state.stop is None:
            state.request_stop("stopped early (the checkpoint says the run finished)")
        _announce(f"run {run_dir} had finished ({state.epoch}/{cfg.train.epochs} epochs) but its {layout.SUMMARY} "
                  f"is {'missing' if previous.status is None else 'out of date'}: rebuilding it from {used}", runtime)
        mark_best_completed(layout.checkpoint_path(run_dir, layout.BEST))
        return _finish(state, dataset)
    if epochs is not None and runtime.dist.is_main:  # the run's config now records the new total
        atomic_write_text(run_dir / layout.CONFIG, cfg.to_yaml())
    _announce(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch_in_epoch} (step {state.step})",
              runtime)
    return _fit_and_finish(state, dataset, callbacks)


def extend_config(cfg: Config, epochs_done: int, epochs: int) -> Config:
    """The config of a run extended to `epochs` in all. onecycle and cosine keep the plan they were
    built over (`schedule.planned_epochs`), so the added epochs hold the lr the plan ended at; per-epoch
    schedules continue as they would have. Refuses a total that does not exceed the epochs done."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= epochs_done:
        raise UserError(f"--epochs must be more than the {epochs_done} epochs this run has done, got {epochs}")
    schedule = cfg.schedule
    if schedule.name in ("onecycle", "cosine") and schedule.planned_epochs is None:
        schedule = schedule.model_copy(update={"planned_epochs": cfg.train.epochs})
    raw = cfg.to_dict()
    raw["train"]["epochs"] = epochs
    raw["schedule"] = schedule.model_dump(mode="json")
    return validate(raw)


def _fit_and_finish(state: TrainState, dataset: Dataset, user_callbacks: Sequence[Callback] = ()) -> Run:
    from cifarlab.training.throughput import measure_speed

    cfg, run_dir, runtime = state.cfg, state.run_dir, state.runtime
    state.speed = measure_speed(state)  # before fit: not training time
    if state.speed is not None:
        _announce(state.speed.describe(), runtime)
    callbacks = default_callbacks(cfg, run_dir, runtime.dist.is_main)
    if runtime.dist.is_main:  # like cifarlab's own logging: one process reports
        callbacks.callbacks.extend(user_callbacks)
    fit(state, callbacks)
    try:
        return _finish(state, dataset)
    finally:  # the loggers publish summary.json, the report and the model, and close their runs
        callbacks.on_run_end(state)


def _finish(state: TrainState, dataset: Dataset) -> Run:
    """summary.json, the closing line and the report of a run whose training is over (or stopped)."""
    cfg, run_dir, runtime = state.cfg, state.run_dir, state.runtime
    summary = write_summary(state)
    if runtime.dist.is_main:
        _announce(_closing_message(state), runtime)
        if cfg.output.report and state.history and state.status == "completed":
            from cifarlab.analysis.run_report import report_from_run_dir

            # The report analyses best.pt, as `cifarlab report` and `cifarlab eval` do: one accuracy per checkpoint.
            report = report_from_run_dir(run_dir, dataset=dataset, device=cfg.train.device)
            _announce(f"report: {report}", runtime)
    if runtime.dist.enabled:  # the run is over: leave no process group behind for the next one
        torch.distributed.destroy_process_group()
    return Run(run_dir, cfg, summary, list(state.progress.history))


def write_summary(state: TrainState) -> dict:
    """summary.json of the run as it stands (run/records.Summary); returns it as a dict (`Run.summary`)."""
    progress, saved = state.progress, state.process.last_checkpoint
    best = state.best() or {}  # the epoch saved as best.pt, chosen by state.monitor
    last = progress.history[-1] if progress.history else {}
    loader = state.train_loader
    per_epoch = min(len(loader) * loader.batch_size, loader.num_images)
    images = progress.epoch * per_epoch + min(progress.batch_in_epoch * loader.batch_size, loader.num_images)
    train_seconds, outcome = progress.elapsed_seconds, state.outcome
    stopped = outcome.status in ("diverged", "interrupted")
    summary = Summary(
        recipe=state.cfg.name, model=state.cfg.model.name, dataset=state.cfg.data.dataset,
        num_params=sum(p.numel() for p in state.model.parameters()),
        epochs_completed=progress.epoch, epochs=state.cfg.train.epochs,
        # best_test_acc is the test accuracy of best.pt: the best one when the test split selects it.
        selected_by=state.monitor, best_test_acc=best.get("test_acc"), best_epoch=best.get("epoch"),
        final_test_acc=last.get("test_acc"), final_test_loss=last.get("test_loss"),
        final_train_acc=last.get("train_acc"),
        best_train_acc=max((row["train_acc"] for row in progress.history), default=None),
        wall_seconds=round(state.wall_seconds, 3), train_seconds=round(train_seconds, 3),
        compile_seconds=round(progress.compile_seconds, 3),
        train_images_per_second=round(images / train_seconds, 1) if train_seconds else None,
        **(state.speed.summary(images / train_seconds if train_seconds else None) if state.speed else {}),
        lr_peak=progress.lr_peak, lr_peak_source=progress.lr_peak_source, precision=state.runtime.precision.name,
        tta=state.cfg.train.tta, device=state.runtime.describe(), versions=versions(), status=outcome.status,
        early_stop=state.early_stop, diverged_at=state.diverged_at,
        # Where to go on from: the newest last.pt holding finite weights (never one saved after the blow-up).
        last_good_checkpoint=saved["path"] if stopped and saved else None,
        signal=outcome.details.get("signal") if outcome.status == "interrupted" else None,
        signal_number=outcome.details.get("signal_number") if outcome.status == "interrupted" else None,
    )
    if state.val_loader is not None:
        summary.best_val_acc, summary.best_val_loss = best.get("val_acc"), best.get("val_loss")
        summary.final_val_acc, summary.val_images = last.get("val_acc"), state.val_loader.num_images
    if state.runtime.dist.is_main:
        write_summary_file(state.run_dir, summary)
    return summary.to_json()


def _closing_message(state: TrainState) -> str:
    run_dir = state.run_dir
    if state.status == "interrupted":
        return (f"{state.outcome.reason} at epoch {state.epoch + 1}, step {state.step}; "
                f"checkpoint saved. Resume with: cifarlab resume {run_dir}")
    if state.status == "diverged":
        where, saved = state.diverged_at, state.process.last_checkpoint
        good = (f"last good checkpoint: {saved['path']} (step {saved['step']}, epoch {saved['epoch']})" if saved
                else "no checkpoint was written before it")
        return (f"training diverged: non-finite loss at step {where['step']} with lr {where['lr']:.4g}; "
                f"{good}. Try a lower learning rate: `cifarlab lr-find {state.cfg.name}` (the LR range test) "
                f"suggests one")
    best = state.best()
    if best is None:  # stopped before its first epoch ended
        return f"done: stopped before any epoch finished ({state.outcome.reason}) in {run_dir}"
    if state.early_stop is not None:
        run_dir = f"{run_dir} (stopped early after epoch {state.epoch}: {state.outcome.reason})"
    if state.monitor == "test_acc":
        return f"done: best test accuracy {100 * best['test_acc']:.2f}% at epoch {best['epoch']} in {run_dir}"
    return (f"done: {layout.BEST} is epoch {best['epoch']} (chosen by {state.monitor} {best[state.monitor]:.4g}), "
            f"test accuracy {100 * best['test_acc']:.2f}%, in {run_dir}")


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
