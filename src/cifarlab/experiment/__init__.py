"""The run lifecycle: a config in, a finished run directory out (state, fit, summary, report), or a
run directory continued from its last checkpoint. The pieces are built in `trainer/build.py`.

This is the Python API behind the CLI: `cifarlab.train("fmnist-quick", ["train.epochs=2"])` returns a
`Run` with its metrics, so it works the same from a notebook. This module is the lifecycle itself; beside
it, `prepare` (checks and state before a run trains), `resumable` (what a resume goes on from) and
`summary` (summary.json and the closing line).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from cifarlab.config import Config
from cifarlab.data.dataset import Dataset
from cifarlab.data.prepare import load_data
from cifarlab.errors import UserError
from cifarlab.experiment.prepare import (
    announce,
    checked_config,
    data_line,
    prepare_state,
    refuse_used_run_dir,
    shared_run_dir,
)
from cifarlab.experiment.resumable import extend_config, restore_state, resume_point
from cifarlab.experiment.summary import closing_message, write_summary
from cifarlab.messages import quiet
from cifarlab.run import layout
from cifarlab.run.lock import RunLock
from cifarlab.run.metrics import EpochRow
from cifarlab.run.summary import Summary
from cifarlab.runtime import is_rank_zero
from cifarlab.trainer.build import build_state, default_callbacks
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.loop import fit
from cifarlab.trainer.state import TrainState

# What `from cifarlab.experiment import ...` offers; the builders are re-exported for the benchmarks and tests.
__all__ = ["Run", "train", "resume", "extend_config", "write_summary", "data_line",
           "build_state", "load_data", "default_callbacks"]


@dataclass
class Run:
    run_dir: Path
    config: Config
    summary: Summary  # summary.json (run/summary.Summary)
    history: list[EpochRow]  # one row per finished epoch

    @property
    def best_test_acc(self) -> float:
        return self.summary.best_test_acc

    @property
    def status(self) -> str:
        """completed | interrupted | diverged. SIGINT/SIGTERM during `train` finish the step, save a
        checkpoint and return here with "interrupted" (no exception): check it when looping over runs."""
        return self.summary.status


# ------------------------------------------------------------------------------------------ running

def train(config: Union[Config, str, None] = None, overrides: Sequence[str] = (), run_dir: Optional[Path] = None,
          data=None, callbacks: Sequence[Callback] = (), model=None) -> Run:
    """Train a recipe name, YAML path or Config (plus `key=value` overrides) into a new run directory.

    `data`: images from Python instead of `data.dataset` — `(x_train, y_train, x_test, y_test[, classes])`,
    a dict of those, or a Dataset (see `cifarlab.data.arrays`); the run then records `data.dataset: arrays`.
    `callbacks`: your own `Callback`s, called after cifarlab's at each hook (see trainer/callbacks/__init__.py).
    `model`: a Module instance, class or factory instead of `model.name` (built inside `rebuild_with(model)`,
    see models/python_objects.py)."""
    run_dir = None if run_dir is None else layout.given_run_dir(run_dir)
    cfg, runtime, dataset = checked_config(config, overrides, data, run_dir, model)
    with quiet(cfg.output.progress == "none"):  # a quiet run prints its warnings only (messages.py)
        return _train_checked(cfg, runtime, dataset, run_dir, callbacks)


def _train_checked(cfg: Config, runtime, dataset: Dataset, run_dir: Optional[Path],
                   callbacks: Sequence[Callback]) -> Run:
    created = runtime.dist.is_main and (run_dir is None or not Path(run_dir).exists())
    new_parents = _missing_folders(Path(run_dir).parent if run_dir else Path(cfg.output.dir) / cfg.name)
    if run_dir is not None and runtime.dist.is_main:
        refuse_used_run_dir(Path(run_dir))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir) if run_dir else (layout.new_run_dir(cfg.output.dir, cfg.name)
                                             if runtime.dist.is_main else None)
    run_dir = shared_run_dir(run_dir, runtime)
    lock = RunLock(run_dir)
    try:
        if runtime.dist.is_main:  # held until the run is over; the kernel drops it if the process dies
            lock.acquire()
        state = prepare_state(cfg, runtime, dataset, run_dir)
    except BaseException:
        lock.release()
        if created:  # a run that never started leaves nothing behind
            _remove_new(run_dir, new_parents)
        raise
    try:
        with lock:
            return _fit_and_finish(state, dataset, callbacks)
    except UserError:
        # Refused before its first step (e.g. Weights & Biases could not start): nothing trained, nothing
        # to resume, so it leaves nothing behind either, as a run refused while being prepared.
        if created and state.progress.step == 0:
            _remove_new(run_dir, new_parents)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first: what making the run directory creates."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_new(run_dir: Path, new_parents: list[Path]) -> None:
    """A run refused before its first step removes its directory and the folders made for it (`runs/`,
    `runs/<name>/`), each only while empty: another run may have started in one meanwhile."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in new_parents:
        try:
            folder.rmdir()
        except OSError:
            break


def resume(run_dir: Union[str, Path], data=None, callbacks: Sequence[Callback] = (),
           epochs: Optional[int] = None, more: Optional[int] = None) -> Run:
    """Continue a run from its last checkpoint, into the same run directory (`data` and `callbacks` as
    for `train`; a run trained on arrays needs its arrays again). `epochs=N` extends the run, finished or
    not, to N epochs in all, `more=N` to N epochs beyond its planned `train.epochs` (see `extend_config`
    for the schedule of the added epochs).

    Refuses (UserError, nothing written) a missing directory, one without a readable checkpoint, a run
    another process is training, a checkpoint whose contents do not hold up (`Checkpoint.check`), a run that
    already finished and a run that diverged (it would diverge again). A run whose last.pt says it finished
    but whose summary.json is missing or older (a kill between the final checkpoint and the summary) gets
    its summary.json, best.pt status and report rebuilt from the checkpoint, without training."""
    run_dir = Path(run_dir)
    checkpoint = layout.checkpoint_path(run_dir, layout.LAST)
    if more is not None and epochs is not None:
        raise UserError("give the new total (epochs, --epochs) or the epochs to add (more, --more), not both")
    if more is not None and (isinstance(more, bool) or not isinstance(more, int) or more < 1):
        raise UserError(f"more (--more) must be a whole number of epochs to add, at least 1, got {more!r}")
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
        return _resume_locked(run_dir, checkpoint, data, callbacks, epochs, more)


def _resume_locked(run_dir: Path, checkpoint: Path, data, callbacks: Sequence[Callback],
                   epochs: Optional[int], more: Optional[int]) -> Run:
    point = resume_point(run_dir, checkpoint, epochs, more)  # refuses before anything is written
    with quiet(point.cfg.output.progress == "none"):  # a quiet run prints its warnings only (messages.py)
        state, dataset = restore_state(point, run_dir, data, extended=epochs is not None or more is not None)
        if point.finished:  # summary.json, best.pt's status and the report, rebuilt without training
            return _finish(state, dataset)
        return _fit_and_finish(state, dataset, callbacks)


def _fit_and_finish(state: TrainState, dataset: Dataset, user_callbacks: Sequence[Callback] = ()) -> Run:
    from cifarlab.trainer.throughput import measure_speed

    cfg, run_dir, runtime = state.cfg, state.run_dir, state.runtime
    state.speed = measure_speed(state)  # before fit: not training time
    if state.speed is not None:
        announce(state.speed.describe(), runtime)
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
        # A stopped or diverged run's line says how to go on: printed by a quiet run too.
        announce(closing_message(state), runtime, warning=state.status in ("diverged", "interrupted"))
        if cfg.output.report and state.progress.history and state.status == "completed":
            from cifarlab.analysis.run_report import report_from_run_dir

            # The report analyses best.pt, as `cifarlab report` and `cifarlab eval` do: one accuracy per checkpoint.
            report = report_from_run_dir(run_dir, dataset=dataset, device=cfg.train.device)
            announce(f"report: {report}", runtime)
    if runtime.dist.enabled:  # the run is over: leave no process group behind for the next one
        torch.distributed.destroy_process_group()
    return Run(run_dir, cfg, summary, list(state.progress.history))
