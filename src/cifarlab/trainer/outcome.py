"""How a run ends: one typed outcome, with where (epoch, step) and why.

`TrainState.outcome` is the only place it is decided; summary.json, the checkpoints, the closing line,
the exit code and the loggers all read it. On disk the status keeps its four values: an early stop is
a finished run ("completed").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cifarlab.run.outcomes import DivergedAt

RUNNING, COMPLETED, EARLY_STOPPED, INTERRUPTED, DIVERGED = (
    "running", "completed", "early_stopped", "interrupted", "diverged")
STATUS = {RUNNING: "running", COMPLETED: "completed", EARLY_STOPPED: "completed", INTERRUPTED: "interrupted",
          DIVERGED: "diverged"}  # outcome kind -> the status summary.json and checkpoints record


@dataclass(frozen=True)
class Why:
    """What a stop says beyond its kind: the best epoch of an early stop (and the pruner that asked, for a
    sweep's trial), the signal of an interrupt, the first non-finite step of a divergence."""
    best_epoch: Optional[int] = None
    pruned_by: Optional[str] = None
    signal: Optional[str] = None
    signal_number: Optional[int] = None
    diverged_at: Optional[DivergedAt] = None


@dataclass(frozen=True)
class Stop:
    """A reason to stop, recorded when it arises: early_stopped (after the epoch in progress), interrupted
    or diverged (after this step)."""
    kind: str
    epoch: int  # epochs completed when it arose (an early stop: when it takes effect)
    step: int
    reason: str
    why: Why = Why()


@dataclass(frozen=True)
class Outcome:
    """Where the run stands: running, completed, early_stopped, interrupted or diverged."""
    kind: str
    epoch: int  # epochs completed
    step: int
    reason: str  # e.g. "no improvement in test_acc since epoch 3", "stopped by SIGINT"
    why: Why = Why()

    @property
    def status(self) -> str:
        return STATUS[self.kind]

    @property
    def finished(self) -> bool:
        return self.kind in (COMPLETED, EARLY_STOPPED)
