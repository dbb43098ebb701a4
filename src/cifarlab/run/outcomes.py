"""How a run stopped before its end, and where it can go on from: `EarlyStopped` (early stopping or a sweep's
pruner), `DivergedAt` (the first non-finite step) and `SavedCheckpoint` (the newest good last.pt). They travel
in summary.json (run/summary.Summary) and in the checkpoints (run/checkpoint.StoredOutcome)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

PRUNED_BY = "pruned by"  # how a pruned run's stop reason begins (sweep/pruning.py): for people, never parsed


@dataclass(frozen=True)
class EarlyStopped:
    """How a run that stopped before its planned epochs ended (summary.json's and the checkpoints'
    `early_stop`): at `epoch`, best.pt being `best_epoch`, and why. `pruned_by`: the sweep pruner that stopped
    it (None for early stopping or a user's callback); written only when set, so other files keep their keys."""
    epoch: int
    best_epoch: Optional[int]
    reason: str
    pruned_by: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        stored = {"epoch": self.epoch, "best_epoch": self.best_epoch, "reason": self.reason}
        return stored if self.pruned_by is None else {**stored, "pruned_by": self.pruned_by}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional["EarlyStopped"]:
        if not isinstance(data, Mapping) or not data:
            return None
        reason = data.get("reason") or f"no improvement since epoch {data.get('best_epoch')}"
        return cls(data.get("epoch"), data.get("best_epoch"), reason, data.get("pruned_by"))


@dataclass(frozen=True)
class DivergedAt:
    """The first non-finite training step of a diverged run, and its learning rate."""
    step: int
    lr: float

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "lr": self.lr}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> Optional["DivergedAt"]:
        return cls(data.get("step"), data.get("lr")) if isinstance(data, Mapping) else None


@dataclass(frozen=True)
class SavedCheckpoint:
    """The newest good last.pt of this process: where, at which epoch and step, and the status it holds
    (None where a resume read it: the file is the one it went on from)."""
    path: str
    epoch: int
    step: int
    status: Optional[str] = None

