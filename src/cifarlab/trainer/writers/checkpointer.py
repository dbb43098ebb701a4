"""Checkpointer: last.pt and best.pt of a run as it trains (and with output.keep the k best epochs' own
files).

best.pt is saved when its epoch ends, while the run is still running; a run that then completes must say
so in best.pt too. The Checkpointer keeps the best epoch's record (on the CPU: a copy of what was written)
and writes it again with the final status, instead of reading the file back; only a run rebuilt from its
last.pt after a kill between the two, or a resumed run whose best epoch an earlier process saved
(`mark_best_completed`), has to read best.pt back."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from cifarlab.run.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from cifarlab.run.layout import BEST, LAST, epoch_checkpoint, epoch_checkpoints
from cifarlab.run.metrics import ranked
from cifarlab.run.outcomes import SavedCheckpoint
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.checkpoint import make_checkpoint
from cifarlab.trainer.outcome import EARLY_STOPPED, INTERRUPTED


class Checkpointer(Callback):
    """last.pt every N epochs (and every N steps if asked), best.pt on improvement, and on interrupt.

    It only saves: whether the weights are still good is the loop's call (`state.outcome`), so after a
    divergence last.pt stays the last good state (`state.process.last_checkpoint` says which)."""

    def __init__(self, directory: Path, every_epochs: int = 1, every_steps: int | None = None,
                 keep: int | None = None):
        self.directory = Path(directory)
        self.every_epochs, self.every_steps, self.keep = every_epochs, every_steps, keep
        self.best: Optional[Checkpoint] = None  # best.pt as this process wrote it, while its status may change
        self.wrote_best = False  # by this process (a resumed run's best epoch may be an earlier process's)

    def save(self, state, *names: str) -> None:
        checkpoint = make_checkpoint(state)
        save_checkpoint(checkpoint, *(self.directory / name for name in names))
        if BEST in names:  # kept while the run may still complete (module doc)
            self.wrote_best = True
            running = checkpoint.status != "completed"
            self.best = Checkpoint.model_construct(**_on_cpu(checkpoint.to_payload())) if running else None
        if LAST in names:  # the status the file holds: a signal during the save changes state.status, not it
            progress = state.progress
            state.process.last_checkpoint = SavedCheckpoint(str(self.directory / LAST), progress.epoch, progress.step,
                                                            checkpoint.status)

    def on_step_end(self, state):
        if self.every_steps and state.progress.step % self.every_steps == 0 \
                and state.progress.batch_in_epoch < state.steps_per_epoch and state.status != "diverged":
            self.save(state, LAST)

    def on_epoch_end(self, state):
        if state.status == "diverged":
            return
        names = [BEST] if state.best() is state.progress.history[-1] else []
        if state.progress.epoch % self.every_epochs == 0 or state.status == "completed":
            names.append(LAST)
        top = self.top_epochs(state)
        if state.progress.epoch in top:
            names.append(epoch_checkpoint(self.directory.parent, state.progress.epoch).name)
        if names:  # one serialisation for every file of the newest epoch
            self.save(state, *names)
        # Only once the new file is complete (written to a temporary name, then renamed): at every moment the
        # folder holds the k best epochs saved so far. last.pt and best.pt have other names: never removed.
        for epoch, path in epoch_checkpoints(self.directory.parent).items() if self.keep else ():
            if epoch not in top:
                path.unlink(missing_ok=True)

    def top_epochs(self, state) -> set[int]:
        """The `keep` best epochs of the history by the monitor (the earlier epoch first on ties, as best.pt)."""
        if not self.keep:
            return set()
        return {row.epoch for row in ranked(state.progress.history, state.monitor)[:self.keep]}

    def on_fit_end(self, state):
        # Interrupted: save where we are. Stopped early: save as finished, so resume knows it is done (not
        # when last.pt holds this very step with this status already: an early stop decided before
        # on_epoch_end saved; one a later callback asked for in on_epoch_end is saved again here).
        saved = state.process.last_checkpoint
        here = saved is not None and saved.step == state.progress.step and saved.path == str(self.directory / LAST) \
            and saved.status == state.status
        if state.outcome.kind in (INTERRUPTED, EARLY_STOPPED) and not here:
            self.save(state, LAST)
        if state.status == "completed" and self.best is not None:  # written while running: now it finished
            save_checkpoint(self.best.model_copy(update={"status": "completed"}), self.directory / BEST)
            self.best = None
        elif state.status == "completed" and not self.wrote_best:  # an earlier process of the run wrote it
            mark_best_completed(self.directory / BEST)


def _on_cpu(value: Any) -> Any:
    """`value` with every tensor copied to the CPU (a checkpoint's state_dicts hold the live parameters)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def mark_best_completed(best: Path) -> None:
    """A run rebuilt from its final last.pt after a kill before best.pt was marked (the process that held
    it is gone): read best.pt back and say that the run finished."""
    if best.is_file():
        checkpoint, _ = read_checkpoint(best)
        if checkpoint.status != "completed":
            save_checkpoint(checkpoint.model_copy(update={"status": "completed"}), best)
