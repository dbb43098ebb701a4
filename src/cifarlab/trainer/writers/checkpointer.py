"""Checkpointer: last.pt and best.pt of a run as it trains (and with output.keep the k best epochs' own
files); mark_best_completed once it has finished."""
from __future__ import annotations

from pathlib import Path

from cifarlab.run.checkpoint import read_checkpoint, save_checkpoint
from cifarlab.run.layout import BEST, LAST, epoch_checkpoint, epoch_checkpoints
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

    def save(self, state, *names: str) -> None:
        checkpoint = make_checkpoint(state)
        save_checkpoint(checkpoint, *(self.directory / name for name in names))
        if LAST in names:  # the status the file holds: a signal during the save changes state.status, not it
            state.process.last_checkpoint = {"path": str(self.directory / LAST), "epoch": state.progress.epoch,
                                             "step": state.progress.step, "status": checkpoint.status}

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
        sign = 1 if state.monitor.endswith("loss") else -1
        ranked = sorted(state.progress.history, key=lambda row: (sign * row[state.monitor], row["epoch"]))
        return {row["epoch"] for row in ranked[:self.keep]}

    def on_fit_end(self, state):
        # Interrupted: save where we are. Stopped early: save as finished, so resume knows it is done (not
        # when last.pt holds this very step with this status already: an early stop decided before
        # on_epoch_end saved; one a later callback asked for in on_epoch_end is saved again here).
        saved = state.process.last_checkpoint or {}
        here = saved.get("step") == state.progress.step and saved.get("path") == str(self.directory / LAST) \
            and saved.get("status") == state.status
        if state.outcome.kind in (INTERRUPTED, EARLY_STOPPED) and not here:
            self.save(state, LAST)
        if state.status == "completed":
            mark_best_completed(self.directory / BEST)


def mark_best_completed(best: Path) -> None:
    """best.pt was written while its run was still running: say now that the run finished."""
    if best.is_file():
        checkpoint, _ = read_checkpoint(best)
        if checkpoint.status != "completed":
            save_checkpoint(checkpoint.model_copy(update={"status": "completed"}), best)
