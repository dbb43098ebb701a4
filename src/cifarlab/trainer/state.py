"""`TrainState`: what the loop and its callbacks share, made of parts with one job each.

- `state.objects` (`TrainObjects`): the training objects — model, optimizer, schedule, loaders, EMA,
  Lookahead, step metrics. Built once by trainer/build.py; a checkpoint saves their own state_dicts.
- `state.progress` (`Progress`): the counters a checkpoint saves and a resume restores, as one unit
  (`Progress.state_dict` / `load_state_dict`, same payload keys as ever): epoch, step, batch_in_epoch,
  timings, history, and how the peak learning rate was chosen.
- `state.process` (`ProcessValues`): this process's values, never saved: the newest logging window, when
  this process's fit began, whether an epoch is open, compile warm-up steps left, the newest good last.pt.
- The outcome: `state.stop` (what was asked) and `state.outcome` (where the run stands, decided here only;
  kinds in trainer/outcome.py). Callbacks and the signal handler only ask (`request_stop`, `interrupt`),
  the loop judges divergence (`check_finite`).
- Beside them: cfg, runtime, run_dir, classes, monitor, data_fingerprint and speed.

Each value has one spelling, through the part that owns it: `state.progress.epoch`, `state.objects.model`,
`state.process.window` (the flat aliases of 0.x are gone; CHANGELOG.md). What a callback may read and ask
is listed in docs/python-api.md ("Callbacks").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cifarlab.config import Config
from cifarlab.data.loader import DeviceLoader
from cifarlab.run.checkpoint import outcome as stored_outcome
from cifarlab.run.metrics import EpochRow, best_row
from cifarlab.run.model_card import ModelCard
from cifarlab.run.outcomes import DivergedAt, EarlyStopped, SavedCheckpoint
from cifarlab.runtime import Runtime
from cifarlab.trainer.ema import EMA
from cifarlab.trainer.lookahead import Lookahead
from cifarlab.trainer.metrics import StepMetrics
from cifarlab.trainer.optim import GradStep, Schedule
from cifarlab.trainer.outcome import COMPLETED, DIVERGED, EARLY_STOPPED, INTERRUPTED, RUNNING, Outcome, Stop, Why

# Steps of a compiled model whose time counts as compiling, not training: the first traces and compiles,
# and with reduce-overhead the next ones warm up and record the CUDA graphs. Re-armed when the model
# changes in a way that makes torch.compile trace again (`expect_recompile`).
COMPILE_WARMUP_STEPS = 3


@dataclass
class TrainObjects:
    """The objects that train: built once per process (trainer/build.py), their state in every checkpoint."""
    model: nn.Module  # the plain module: what checkpoints and analysis see
    train_model: nn.Module  # what the loop calls: the model itself, compiled, or wrapped in DDP
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    grad_step: GradStep
    loss_fn: nn.Module
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    metrics: StepMetrics  # per-step loss and accuracy on the device; epoch and window sums
    val_loader: Optional[DeviceLoader] = None  # with a validation split, what selects best.pt
    ema: Optional[EMA] = None
    lookahead: Optional[Lookahead] = None


@dataclass
class Progress:
    """How far the run has come: what a checkpoint saves and a resume restores, as one unit."""
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # batches of the current epoch done (mid-epoch checkpoints)
    elapsed_seconds: float = 0.0  # training wall time, carried across resumes; compile warm-up excluded
    compile_seconds: float = 0.0  # time of the compiled model's warm-up steps, carried across resumes
    wall_seconds_before: float = 0.0  # wall time of the earlier processes of this run
    history: list[EpochRow] = field(default_factory=list)  # one row per finished epoch
    lr_peak: Optional[float] = None  # how the run chose its peak learning rate (saved in "outcome")
    lr_peak_source: Optional[str] = None  # e.g. "range test (steepest)", "schedule.lr_peak", "optim.lr"

    # The payload keys `state_dict` writes (lr_peak and lr_peak_source go in the payload's "outcome").
    KEYS = ("epoch", "step", "batch_in_epoch", "elapsed_seconds", "compile_seconds", "wall_seconds", "history")

    def state_dict(self, process_seconds: float) -> dict[str, Any]:
        """The checkpoint payload's progress keys; `process_seconds`: this process's wall time so far."""
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "elapsed_seconds": self.elapsed_seconds, "compile_seconds": self.compile_seconds,
                "wall_seconds": self.wall_seconds_before + process_seconds,
                "history": [row.as_dict() for row in self.history]}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Back from a checkpoint payload (`Checkpoint.check` accepted it), whichever format wrote it."""
        self.epoch, self.step = payload.get("epoch"), payload.get("step")
        self.batch_in_epoch, self.elapsed_seconds = payload.get("batch_in_epoch"), payload.get("elapsed_seconds")
        self.compile_seconds = payload.get("compile_seconds") or 0.0
        # Files written before wall time was kept: their training time is the best lower bound.
        wall = payload.get("wall_seconds")
        self.wall_seconds_before = payload["elapsed_seconds"] if wall is None else wall
        self.history = [EpochRow.from_dict(row, kind="epoch") for row in payload.get("history")]
        stored = stored_outcome(payload)  # older files kept these in "extra"
        self.lr_peak, self.lr_peak_source = stored.lr_peak, stored.lr_peak_source


@dataclass
class ProcessValues:
    """This process's values: never saved, so a resumed run starts them afresh."""
    window: Optional[EpochRow] = None  # the newest logging window (kind "step": epoch, step, lr, train_loss, train_acc)
    started: Optional[float] = None  # time.perf_counter() when this process's fit began
    epoch_open: bool = False  # between on_epoch_start and the epoch's evaluation (set by the loop)
    compile_warmup_steps: int = 0  # steps still to time as compiling (COMPILE_WARMUP_STEPS)
    # The newest good last.pt: set by the save, or by the resume that read it (a checkpoint cannot name
    # itself, so it is not in one).
    last_checkpoint: Optional[SavedCheckpoint] = None

    def seconds(self) -> float:
        """Wall time of this process's fit so far (0 before it began)."""
        return time.perf_counter() - self.started if self.started is not None else 0.0


@dataclass(slots=True)  # slots: a misspelt or retired name is an AttributeError, never a new attribute
class TrainState:
    """The parts (module doc), the stop asked for so far, and the run's fixed facts; one per process."""
    cfg: Config
    runtime: Runtime
    objects: TrainObjects
    run_dir: Path
    progress: Progress = field(default_factory=Progress)
    process: ProcessValues = field(default_factory=ProcessValues)
    monitor: str = ""  # the EpochRow metric that selects best.pt and early stopping (config.selecting_metric)
    classes: tuple[str, ...] = ()
    data_fingerprint: Optional[dict[str, Optional[str]]] = None  # Dataset.fingerprint of the data trained on
    speed: Optional[Any] = None  # trainer/throughput.Speed: FLOPs per image and peak, for MFU; this process
    stop: Optional[Stop] = None  # why training stops (now, or at the end of the epoch); see `outcome`


    def expect_recompile(self) -> None:
        """The compiled model will trace again (e.g. a parameter stopped training: its graph changes), so
        its next steps are timed as compiling, not training."""
        if self.cfg.train.compile is not None:
            self.process.compile_warmup_steps = max(self.process.compile_warmup_steps, COMPILE_WARMUP_STEPS)

    def check_finite(self, weights: bool = True) -> bool:
        """The one place a run is judged diverged: a non-finite training loss so far, or (with `weights`)
        a non-finite weight. Marks the run diverged and returns False; one device sync."""
        if self.stop is not None and self.stop.kind == DIVERGED:
            return False
        finite = True
        if weights:
            floats = [t for t in self.objects.model.state_dict().values() if t.is_floating_point()]
            finite = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()) if floats else True
        self.objects.metrics.flush()
        bad = self.objects.metrics.first_nonfinite
        if bad is None and finite:
            return True
        self.diverge(bad or DivergedAt(self.progress.step, self.lr))
        return False

    # ------------------------------------------------------------------ stopping, and the outcome
    def request_stop(self, reason: str, best_epoch: Optional[int] = None, pruned_by: Optional[str] = None) -> None:
        """End the run after the current epoch, as finished (early stopping, or your own callback's
        reason): the epoch in progress is trained, evaluated and saved as usual. A stop already decided
        (an interrupt, a divergence, an earlier request) is kept. `pruned_by`: the sweep pruner that asks."""
        if self.stop is None:
            best = self.best()
            best_epoch = best_epoch if best_epoch is not None else best.epoch if best else None
            in_progress = self.process.epoch_open or self.progress.batch_in_epoch > 0
            # Stop.epoch: the epoch count at which it takes effect (this one's end, or now between epochs).
            self.stop = Stop(EARLY_STOPPED, self.progress.epoch + in_progress, self.progress.step, reason,
                             Why(best_epoch=best_epoch, pruned_by=pruned_by))

    def interrupt(self, signal_name: Optional[str] = None, signal_number: Optional[int] = None) -> None:
        """End the run after the current step and save where it is (SIGINT/SIGTERM): it can be resumed."""
        if self.stop is None or self.stop.kind == EARLY_STOPPED:
            self.stop = Stop(INTERRUPTED, self.progress.epoch, self.progress.step,
                             f"stopped by {signal_name or 'a signal'}",
                             Why(signal=signal_name, signal_number=signal_number))

    def diverge(self, at: DivergedAt) -> None:
        """End the run now: a loss or a weight is not finite (`at`: the first bad step and its lr)."""
        self.stop = Stop(DIVERGED, self.progress.epoch, at.step,
                         f"non-finite loss at step {at.step} with lr {at.lr:.4g}", Why(diverged_at=at))

    @property
    def stop_now(self) -> bool:
        """Training must stop after this step (interrupted or diverged), without finishing the epoch."""
        return self.stop is not None and self.stop.kind in (INTERRUPTED, DIVERGED)

    @property
    def outcome(self) -> Outcome:
        """Where the run stands, decided here only: running, completed, early_stopped (once the epoch that
        asked has ended), interrupted or diverged, with where and why."""
        stop = self.stop
        if stop is not None and stop.kind in (INTERRUPTED, DIVERGED):
            return Outcome(stop.kind, self.progress.epoch, self.progress.step, stop.reason, stop.why)
        epoch, step, between_epochs = self.progress.epoch, self.progress.step, self.progress.batch_in_epoch == 0
        if stop is not None and between_epochs and not self.process.epoch_open and epoch >= stop.epoch:
            return Outcome(EARLY_STOPPED, epoch, step, stop.reason, stop.why)
        if epoch >= self.cfg.train.epochs:
            return Outcome(COMPLETED, epoch, step, f"trained all {self.cfg.train.epochs} epochs")
        return Outcome(RUNNING, epoch, step, "")

    @property
    def status(self) -> str:
        """running | completed | interrupted | diverged: what summary.json and every checkpoint say."""
        return self.outcome.status


    @property
    def early_stop(self) -> Optional[EarlyStopped]:
        """An early stop that took effect: when, best.pt's epoch, why (summary.json, checkpoints)."""
        outcome = self.outcome
        if outcome.kind != EARLY_STOPPED:
            return None
        return EarlyStopped(outcome.epoch, outcome.why.best_epoch, outcome.reason, outcome.why.pruned_by)

    @property
    def diverged_at(self) -> Optional[DivergedAt]:
        """The first non-finite step of a diverged run, and its lr."""
        if self.stop is None or self.stop.kind != DIVERGED:
            return None
        return self.stop.why.diverged_at

    @property
    def wall_seconds(self) -> float:
        """Wall time of the whole run so far: every earlier process's, plus this one's since its fit began."""
        return self.progress.wall_seconds_before + self.process.seconds()

    # ------------------------------------------------------------------ reading
    @property
    def card(self) -> ModelCard:
        """What the weights need to be used, saved with them in every checkpoint."""
        images = self.objects.train_loader.images
        return ModelCard.from_config(self.cfg, {
            "classes": list(self.classes), "in_channels": int(images.shape[1]), "image_size": int(images.shape[-1]),
            "mean": list(self.objects.train_loader.mean), "std": list(self.objects.train_loader.std),
            "precision": self.runtime.precision.name, "data_fingerprint": self.data_fingerprint})

    @property
    def eval_model(self) -> nn.Module:
        return self.objects.ema.module if self.objects.ema is not None else self.objects.model

    @property
    def lr(self) -> float:
        """The learning rate of the last optimizer step."""
        return self.objects.schedule.lr_used

    @property
    def steps_per_epoch(self) -> int:
        return len(self.objects.train_loader)

    def best(self, metric: Optional[str] = None) -> Optional[EpochRow]:
        """The history row with the best `metric` (default: the monitor that selects best.pt); the first on ties."""
        return best_row(self.progress.history, metric or self.monitor)
