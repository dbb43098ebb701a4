"""Everything optional around the loop: named no-op hooks that see one `TrainState`.

Hooks: on_fit_start, on_epoch_start, on_step_end, on_epoch_end, on_fit_end. Callbacks that read
metrics do so only every `log_every_steps` steps, the one place the loop synchronises with the device.
"""
from __future__ import annotations

import csv
import math
import signal
import sys
from pathlib import Path

from cifarlab.train.checkpoint import make_payload, save_checkpoint

METRIC_COLUMNS = ["kind", "epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                  "elapsed_seconds", "images_per_second"]


class Callback:
    def on_fit_start(self, state): ...
    def on_epoch_start(self, state): ...
    def on_step_end(self, state): ...
    def on_epoch_end(self, state): ...
    def on_fit_end(self, state): ...


class Callbacks(Callback):
    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def _fire(self, hook: str, state) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(state)

    def on_fit_start(self, state): self._fire("on_fit_start", state)
    def on_epoch_start(self, state): self._fire("on_epoch_start", state)
    def on_step_end(self, state): self._fire("on_step_end", state)
    def on_epoch_end(self, state): self._fire("on_epoch_end", state)
    def on_fit_end(self, state): self._fire("on_fit_end", state)


class StepWindow(Callback):
    """Every log_every_steps steps: read the window meter once and publish it as `state.extra['window']`."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, state):
        if state.step % self.every == 0 or state.batch_in_epoch == state.steps_per_epoch:
            loss, acc, _ = state.window_meter.read()
            state.window_meter.reset()
            state.extra["window"] = {"epoch": state.epoch + 1, "step": state.step, "lr": state.lr,
                                     "train_loss": loss, "train_acc": acc}
            bad_step = int(state.nonfinite_step.item())
            if bad_step >= 0:
                state.stop_reason = "diverged"
                state.extra["diverged_at"] = {"step": bad_step, "lr": state.lr}


class Progress(Callback):
    """A tqdm bar per epoch (plain lines when not a terminal) and the references' per-epoch test line."""

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        self.bars = mode == "bar" or (mode == "auto" and self.stream.isatty())
        self.silent = mode == "none"
        self.bar = None
        self._shown = None

    def on_epoch_start(self, state):
        if self.silent:
            return
        total = state.cfg.train.epochs
        if self.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=state.steps_per_epoch, initial=state.batch_in_epoch, file=self.stream,
                            desc=f"Epoch {state.epoch + 1}/{total}", leave=True, dynamic_ncols=True)
        else:
            print(f"Epoch {state.epoch + 1}/{total}", file=self.stream, flush=True)

    def on_step_end(self, state):
        window = state.extra.get("window")
        fresh = window is not None and window is not self._shown
        if fresh:
            self._shown = window
            text = f"loss={window['train_loss']:.4f} acc={100 * window['train_acc']:.2f}% lr={window['lr']:.3g}"
        if self.bar is not None:
            if fresh:
                self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif fresh and not self.silent:
            print(f"  step {window['step']} ({state.batch_in_epoch}/{state.steps_per_epoch}): {text}",
                  file=self.stream, flush=True)

    def on_epoch_end(self, state):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.silent:
            return
        row = state.history[-1]
        n = state.test_loader.num_images
        print(f"Train: Average loss: {row['train_loss']:.4f}, Accuracy: {100 * row['train_acc']:.2f}%, "
              f"{row['images_per_second']:.0f} images/s", file=self.stream)
        print(f"Test set: Average loss: {row['test_loss']:.4f}, Accuracy: {round(row['test_acc'] * n)}/{n} "
              f"({100 * row['test_acc']:.2f}%)", file=self.stream, flush=True)

    def on_fit_end(self, state):
        if self.bar is not None:
            self.bar.close()


class CSVLogger(Callback):
    """metrics.csv: a `step` row per logging window and an `epoch` row per epoch; appends on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_window = None

    def on_fit_start(self, state):
        if not self.path.exists():
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(METRIC_COLUMNS)
        else:
            self._truncate_after(state.step)

    def _truncate_after(self, step: int) -> None:
        """Rows logged after the checkpoint we resume from would be logged again: drop them first."""
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [row for row in rows if int(row["step"]) <= step]
        if len(kept) != len(rows):
            with open(self.path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(kept)

    def _append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow({k: _cell(row.get(k)) for k in METRIC_COLUMNS})

    def on_step_end(self, state):
        window = state.extra.get("window")
        if window is not None and window is not self._last_window:
            self._last_window = window
            self._append({"kind": "step", **window})

    def on_epoch_end(self, state):
        self._append({"kind": "epoch", **state.history[-1]})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


class TensorBoard(Callback):
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None
        self._last_window = None

    def on_fit_start(self, state):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step if state.step else None)

    def on_step_end(self, state):
        window = state.extra.get("window")
        if window is not None and window is not self._last_window:
            self._last_window = window
            self.writer.add_scalar("train/loss_step", window["train_loss"], window["step"])
            self.writer.add_scalar("lr", window["lr"], window["step"])

    def on_epoch_end(self, state):
        row = state.history[-1]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            split, metric = key.split("_")
            self.writer.add_scalar(f"{metric}/{split}", row[key], row["epoch"])
        self.writer.flush()

    def on_fit_end(self, state):
        if self.writer is not None:
            self.writer.close()


class Checkpointer(Callback):
    """last.pt every N epochs (and every N steps if asked), best.pt on improvement, and on interrupt."""

    def __init__(self, directory: Path, every_epochs: int = 1, every_steps: int | None = None, monitor: str = "test_acc"):
        self.directory = Path(directory)
        self.every_epochs, self.every_steps, self.monitor = every_epochs, every_steps, monitor

    def save_last(self, state) -> None:
        save_checkpoint(make_payload(state), self.directory / "last.pt")

    def on_step_end(self, state):
        if self.every_steps and state.step % self.every_steps == 0 and state.stop_reason != "diverged" \
                and state.batch_in_epoch < state.steps_per_epoch:
            self.save_last(state)

    def on_epoch_end(self, state):
        if state.stop_reason == "diverged":
            return
        best = state.best(self.monitor)
        if best is state.history[-1]:
            save_checkpoint(make_payload(state), self.directory / "best.pt")
        if state.epoch % self.every_epochs == 0 or state.epoch == state.cfg.train.epochs:
            self.save_last(state)

    def on_fit_end(self, state):
        if state.stop_reason == "interrupted":
            self.save_last(state)


class StopOnSignal(Callback):
    """SIGINT/SIGTERM finish the current step; the loop then stops and the checkpointer saves."""

    def __init__(self):
        self.previous = {}

    def on_fit_start(self, state):
        def handler(signum, frame):
            state.stop_reason = "interrupted"
            state.extra["signal"] = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no harm
                pass

    def on_fit_end(self, state):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()
