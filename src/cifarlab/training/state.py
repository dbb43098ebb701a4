"""`TrainState`: everything the loop and its callbacks share, and everything a checkpoint must hold.

How the run ends is decided in one place, `TrainState.outcome` (kinds in training/outcome.py): callbacks
and the signal handler only ask (`request_stop`, `interrupt`), the loop judges divergence (`check_finite`).
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
from cifarlab.run.records import ModelCard
from cifarlab.runtime import Runtime
from cifarlab.training.ema import EMA
from cifarlab.training.lookahead import Lookahead
from cifarlab.training.metrics import StepMetrics
from cifarlab.training.optim import GradStep, Schedule
from cifarlab.training.outcome import COMPLETED, DIVERGED, EARLY_STOPPED, INTERRUPTED, RUNNING, Outcome, Stop

# Steps of a compiled model whose time counts as compiling, not training: the first traces and compiles,
# and with reduce-overhead the next ones warm up and record the CUDA graphs. Re-armed when the model
# changes in a way that makes torch.compile trace again (`expect_recompile`).
COMPILE_WARMUP_STEPS = 3


@dataclass
class TrainState:
    cfg: Config
    runtime: Runtime
    model: nn.Module  # the plain module: what checkpoints and analysis see
    train_model: nn.Module  # what the loop calls: the model itself, compiled, or wrapped in DDP
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    grad_step: GradStep
    loss_fn: nn.Module
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    run_dir: Path
    val_loader: Optional[DeviceLoader] = None  # with a validation split, what selects best.pt
    monitor: str = "test_acc"  # the history key that selects best.pt and early stopping
    ema: Optional[EMA] = None
    lookahead: Optional[Lookahead] = None
    classes: tuple[str, ...] = ()
    data_fingerprint: Optional[dict[str, Optional[str]]] = None  # Dataset.fingerprint of the data trained on
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    batch_in_epoch: int = 0  # batches of the current epoch done (mid-epoch checkpoints)
    elapsed_seconds: float = 0.0  # training wall time, carried across resumes; compile warm-up excluded
    compile_seconds: float = 0.0  # time of the compiled model's warm-up steps, carried across resumes
    compile_warmup_steps: int = 0  # this process's steps still to count as compiling
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    metrics: Optional[StepMetrics] = None  # per-step loss and accuracy on the device; epoch and window sums
    stop: Optional[Stop] = None  # why training stops (now, or at the end of the epoch); see `outcome`
    last_checkpoint: Optional[dict[str, Any]] = None  # {path, epoch, step, status} of the newest good last.pt
    # Kept in checkpoints: how the run chose its peak learning rate, the wall time of earlier processes.
    lr_peak: Optional[float] = None
    lr_peak_source: Optional[str] = None  # e.g. "range test (steepest)", "schedule.lr_peak", "optim.lr"
    wall_seconds_before: float = 0.0
    speed: Optional[Any] = None  # training/throughput.Speed: FLOPs per image and peak, for MFU; this process
    # This process only (never saved): the newest logging window, when this process's fit began.
    window: Optional[dict[str, Any]] = None  # {epoch, step, lr, train_loss, train_acc}
    process_started: Optional[float] = None  # time.perf_counter()
    epoch_open: bool = False  # between on_epoch_start and the epoch's evaluation (set by the loop)

    def __post_init__(self):
        if self.metrics is None:  # room for the steps between two syncs (it grows if a caller takes more)
            steps = min(self.cfg.train.log_every_steps, len(self.train_loader))
            self.metrics = StepMetrics(self.runtime.device, capacity=steps + 1)

    def expect_recompile(self) -> None:
        """The compiled model will trace again (e.g. a parameter stopped training: its graph changes), so
        its next steps are timed as compiling, not training."""
        if self.cfg.train.compile is not None:
            self.compile_warmup_steps = max(self.compile_warmup_steps, COMPILE_WARMUP_STEPS)

    def check_finite(self, weights: bool = True) -> bool:
        """The one place a run is judged diverged: a non-finite training loss so far, or (with `weights`)
        a non-finite weight. Marks the run diverged and returns False; one device sync."""
        if self.stop is not None and self.stop.kind == DIVERGED:
            return False
        finite = True
        if weights:
            floats = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            finite = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()) if floats else True
        self.metrics.flush()
        bad = self.metrics.first_nonfinite
        if bad is None and finite:
            return True
        self.diverge(bad or {"step": self.step, "lr": self.lr})
        return False

    # ------------------------------------------------------------------ stopping, and the outcome
    def request_stop(self, reason: str, best_epoch: Optional[int] = None) -> None:
        """End the run after the current epoch, as finished (early stopping, or your own callback's
        reason): the epoch in progress is trained, evaluated and saved as usual. A stop already decided
        (an interrupt, a divergence, an earlier request) is kept."""
        if self.stop is None:
            best = self.best()
            best_epoch = best_epoch if best_epoch is not None else best["epoch"] if best else None
            in_progress = self.epoch_open or self.batch_in_epoch > 0
            # Stop.epoch: the epoch count at which it takes effect (this one's end, or now between epochs).
            self.stop = Stop(EARLY_STOPPED, self.epoch + in_progress, self.step, reason, {"best_epoch": best_epoch})

    def interrupt(self, signal_name: Optional[str] = None, signal_number: Optional[int] = None) -> None:
        """End the run after the current step and save where it is (SIGINT/SIGTERM): it can be resumed."""
        if self.stop is None or self.stop.kind == EARLY_STOPPED:
            self.stop = Stop(INTERRUPTED, self.epoch, self.step, f"stopped by {signal_name or 'a signal'}",
                             {"signal": signal_name, "signal_number": signal_number})

    def diverge(self, at: dict[str, Any]) -> None:
        """End the run now: a loss or a weight is not finite (`at`: {step, lr} of the first bad step)."""
        self.stop = Stop(DIVERGED, self.epoch, at["step"], f"non-finite loss at step {at['step']} with lr "
                         f"{at['lr']:.4g}", {"step": at["step"], "lr": at["lr"]})

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
            return Outcome(stop.kind, self.epoch, self.step, stop.reason, stop.details)
        if stop is not None and self.batch_in_epoch == 0 and not self.epoch_open and self.epoch >= stop.epoch:
            return Outcome(EARLY_STOPPED, self.epoch, self.step, stop.reason, stop.details)
        if self.epoch >= self.cfg.train.epochs:
            return Outcome(COMPLETED, self.epoch, self.step, f"trained all {self.cfg.train.epochs} epochs")
        return Outcome(RUNNING, self.epoch, self.step, "")

    @property
    def status(self) -> str:
        """running | completed | interrupted | diverged: what summary.json and every checkpoint say."""
        return self.outcome.status

    @property
    def stop_reason(self) -> Optional[str]:
        """interrupted | diverged | early_stop | None: the stop asked for so far (the older spelling)."""
        return None if self.stop is None else {EARLY_STOPPED: "early_stop"}.get(self.stop.kind, self.stop.kind)

    @stop_reason.setter
    def stop_reason(self, value: str) -> None:
        """`state.stop_reason = "early_stop"` is `state.request_stop(...)`, kept for callbacks written so."""
        if value != "early_stop":
            raise ValueError(f"a callback can set state.stop_reason only to 'early_stop', got {value!r} "
                             f"(or call state.request_stop(reason))")
        self.request_stop("asked by a callback (state.stop_reason = 'early_stop')")

    @property
    def early_stop(self) -> Optional[dict[str, Any]]:
        """{epoch, best_epoch, reason} of an early stop that took effect (summary.json, checkpoints)."""
        outcome = self.outcome
        if outcome.kind != EARLY_STOPPED:
            return None
        return {"epoch": outcome.epoch, "best_epoch": outcome.details.get("best_epoch"), "reason": outcome.reason}

    @property
    def diverged_at(self) -> Optional[dict[str, Any]]:
        """{step, lr} of the first non-finite step of a diverged run."""
        if self.stop is None or self.stop.kind != DIVERGED:
            return None
        return {"step": self.stop.details["step"], "lr": self.stop.details["lr"]}

    @property
    def wall_seconds(self) -> float:
        """Wall time of the whole run so far: every earlier process's, plus this one's since its fit began."""
        now = time.perf_counter() - self.process_started if self.process_started is not None else 0.0
        return self.wall_seconds_before + now

    # ------------------------------------------------------------------ reading
    @property
    def card(self) -> ModelCard:
        """What the weights need to be used, saved with them in every checkpoint."""
        images = self.train_loader.images
        return ModelCard(classes=tuple(self.classes), in_channels=int(images.shape[1]),
                         image_size=int(images.shape[-1]), mean=tuple(self.train_loader.mean),
                         std=tuple(self.train_loader.std), precision=self.runtime.precision.name,
                         tta=self.cfg.train.tta, architecture=self.cfg.model.name,
                         options=dict(self.cfg.model.options))

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        """The learning rate of the last optimizer step."""
        return self.schedule.lr_used

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def best(self, key: Optional[str] = None) -> Optional[dict[str, Any]]:
        """The history row with the best `key` (default: the monitor that selects best.pt); the first on ties."""
        if not self.history:
            return None
        key = key or self.monitor
        pick = min if key.endswith("loss") else max
        return pick(self.history, key=lambda row: row[key])
