"""`TrainState`: everything the loop and its callbacks share, and everything a checkpoint must hold."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cifarlab.config import Config
from cifarlab.data.loader import DeviceLoader
from cifarlab.runtime import Runtime
from cifarlab.training.ema import EMA
from cifarlab.training.lookahead import Lookahead
from cifarlab.training.metrics import StepMetrics
from cifarlab.training.optim import GradStep, Schedule

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
    stop_reason: Optional[str] = None  # interrupted | diverged | early_stop
    last_checkpoint: Optional[dict[str, Any]] = None  # {path, epoch, step} of the newest last.pt with good weights
    # Kept in checkpoints: how the run chose its peak learning rate, and where early stopping stopped it.
    lr_peak: Optional[float] = None
    lr_peak_source: Optional[str] = None  # e.g. "range test (steepest)", "schedule.lr_peak", "optim.lr"
    early_stop: Optional[dict[str, int]] = None  # {epoch, best_epoch}
    # This process only (never saved): the newest logging window, the divergence point, the stopping signal.
    window: Optional[dict[str, Any]] = None  # {epoch, step, lr, train_loss, train_acc}
    diverged_at: Optional[dict[str, Any]] = None  # {step, lr}
    signal_name: Optional[str] = None
    signal_number: Optional[int] = None

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
        if self.stop_reason == "diverged":
            return False
        finite = True
        if weights:
            floats = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            finite = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()) if floats else True
        self.metrics.flush()
        bad = self.metrics.first_nonfinite
        if bad is None and finite:
            return True
        self.stop_reason = "diverged"
        self.diverged_at = bad or {"step": self.step, "lr": self.lr}
        return False

    @property
    def status(self) -> str:
        """running | completed | interrupted | diverged: what summary.json and every checkpoint say."""
        if self.stop_reason in ("interrupted", "diverged"):
            return self.stop_reason
        if self.stop_reason == "early_stop" or self.epoch >= self.cfg.train.epochs:
            return "completed"
        return "running"

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
