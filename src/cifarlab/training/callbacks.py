"""Everything optional around the loop: named no-op hooks that see one `TrainState`.

Hooks: on_fit_start, on_epoch_start, on_step_end, on_epoch_end, on_fit_end. Callbacks never
synchronise with the device themselves: they read what the loop publishes at its sync points
(`state.window` every `train.log_every_steps` steps, `state.history` at the epoch end).
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import signal
import sys
from pathlib import Path

from cifarlab.atomic import append_line, atomic_write_text
from cifarlab.rundir import METRIC_COLUMNS, is_whole_row
from cifarlab.training.checkpoint import load_checkpoint, make_payload, save_checkpoint


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


class ModelEpochs(Callback):
    """Tells a model that has a `start_epoch(epoch)` method (fastnet) which epoch begins: a model may
    train some parameters only in some epochs. From `state.epoch`, so a resumed run does the same.
    A parameter that starts or stops training changes a compiled model's graph: torch.compile traces
    again, and those steps are timed as compiling (`TrainState.expect_recompile`)."""

    def on_epoch_start(self, state):
        start_epoch = getattr(state.model, "start_epoch", None)
        if start_epoch is None:
            return
        before = [p.requires_grad for p in state.model.parameters()]
        start_epoch(state.epoch)
        if [p.requires_grad for p in state.model.parameters()] != before:
            state.expect_recompile()


class Progress(Callback):
    """A tqdm bar per epoch (plain lines when not a terminal) and the references' per-epoch test line."""

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream or sys.stderr
        self.bars = mode == "bar" or (mode == "auto" and (self.stream.isatty() or in_notebook()))
        self.silent = mode == "none"
        self.bar = None
        self._shown = None

    def on_epoch_start(self, state):
        if self.silent:
            return
        total = state.cfg.train.epochs
        if self.bars:
            from tqdm.auto import tqdm  # a widget bar in Jupyter, a text bar in a terminal

            self.bar = tqdm(total=state.steps_per_epoch, initial=state.batch_in_epoch, file=self.stream,
                            desc=f"Epoch {state.epoch + 1}/{total}", leave=True, dynamic_ncols=True)
        else:
            print(f"Epoch {state.epoch + 1}/{total}", file=self.stream, flush=True)

    def on_step_end(self, state):
        window = state.window
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
        compiling = f" (plus {row['compile_seconds']:.1f} s compiling)" if row.get("compile_seconds") else ""
        mfu = f", MFU {100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ""
        print(f"Train: Average loss: {row['train_loss']:.4f}, Accuracy: {100 * row['train_acc']:.2f}%, "
              f"{row['images_per_second']:.0f} images/s{mfu}{compiling}", file=self.stream)
        if state.val_loader is not None:
            v = state.val_loader.num_images
            print(f"Validation set: Average loss: {row['val_loss']:.4f}, Accuracy: {round(row['val_acc'] * v)}/{v} "
                  f"({100 * row['val_acc']:.2f}%)", file=self.stream)
        print(f"Test set: Average loss: {row['test_loss']:.4f}, Accuracy: {round(row['test_acc'] * n)}/{n} "
              f"({100 * row['test_acc']:.2f}%)", file=self.stream, flush=True)

    def on_fit_end(self, state):
        if self.bar is not None:
            self.bar.close()


def in_notebook() -> bool:
    """Running in a Jupyter kernel (where stderr is not a terminal but a bar still renders)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class CSVLogger(Callback):
    """metrics.csv: a `step` row per logging window and an `epoch` row per epoch; continues on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_window = None

    def on_fit_start(self, state):
        # Rows logged after the checkpoint we resume from will be logged again, and a kill may have left
        # half a line: keep only whole rows up to the checkpoint's step, rewritten atomically.
        kept = self._rows_up_to(state.step) if self.path.exists() else []
        out = io.StringIO()
        writer = csv.DictWriter(out, METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.path, out.getvalue())

    def _rows_up_to(self, step: int) -> list[dict]:
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [row for row in rows if is_whole_row(row) and int(row["step"]) <= step]

    def _append(self, row: dict) -> None:
        # One write, then fsync: after a kill the file holds whole rows (the reader drops a torn last one).
        line = io.StringIO()
        csv.DictWriter(line, METRIC_COLUMNS, lineterminator="\n").writerow(
            {k: _cell(row.get(k)) for k in METRIC_COLUMNS})
        append_line(self.path, line.getvalue())

    def on_step_end(self, state):
        window = state.window
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


HPARAMS_RUN = "hparams"  # tb/hparams: the HPARAMS tab's session of a finished run


class TensorBoard(Callback):
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None
        self._last_window = None

    def on_fit_start(self, state):
        from torch.utils.tensorboard import SummaryWriter

        # On resume, drop the events logged after the checkpoint (steps > state.step): they come again.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step + 1 if state.step else None)

    def on_step_end(self, state):
        window = state.window
        if window is not None and window is not self._last_window:
            self._last_window = window
            self.writer.add_scalar("train/loss_step", window["train_loss"], window["step"])
            self.writer.add_scalar("lr", window["lr"], window["step"])

    def on_epoch_end(self, state):
        # Against the optimizer step, like the step scalars, so that purge_step on resume drops exactly
        # the events logged after the checkpoint.
        row = state.history[-1]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            if key not in row:
                continue
            split, metric = key.split("_")
            self.writer.add_scalar(f"{metric}/{split}", row[key], row["step"])
        self.writer.add_scalar("epoch", row["epoch"], row["step"])
        self.writer.flush()

    def on_fit_end(self, state):
        if self.writer is None:
            return
        if state.status == "completed" and state.history:
            self._hparams(state)
        self.writer.close()

    def _hparams(self, state) -> None:
        """The flat config and the final metrics in TensorBoard's HPARAMS tab, once, under tb/hparams
        (an extended run replaces them)."""
        from cifarlab.config_diff import flatten, scalar

        hparams = {key: scalar(value) for key, value in flatten(state.cfg.to_dict()).items() if key != "description"}
        last, best = state.history[-1], state.best()
        metrics = {f"hparam/final_{key}": last[key] for key in ("test_acc", "test_loss", "train_acc", "train_loss",
                                                                "val_acc", "val_loss") if key in last}
        metrics.update({f"hparam/best_{key}": best[key] for key in ("test_acc", "val_acc") if key in best})
        shutil.rmtree(self.log_dir / HPARAMS_RUN, ignore_errors=True)
        self.writer.add_hparams(hparams, metrics, run_name=HPARAMS_RUN, global_step=state.step)


class Checkpointer(Callback):
    """last.pt every N epochs (and every N steps if asked), best.pt on improvement, and on interrupt.

    It only saves: whether the weights are still good is the loop's call (`state.stop_reason`), so after
    a divergence last.pt stays the last good state (`state.last_checkpoint` says which)."""

    def __init__(self, directory: Path, every_epochs: int = 1, every_steps: int | None = None):
        self.directory = Path(directory)
        self.every_epochs, self.every_steps = every_epochs, every_steps

    def save(self, state, *names: str) -> None:
        save_checkpoint(make_payload(state), *(self.directory / name for name in names))
        if "last.pt" in names:
            state.last_checkpoint = {"path": str(self.directory / "last.pt"), "epoch": state.epoch, "step": state.step}

    def on_step_end(self, state):
        if self.every_steps and state.step % self.every_steps == 0 \
                and state.batch_in_epoch < state.steps_per_epoch and state.stop_reason != "diverged":
            self.save(state, "last.pt")

    def on_epoch_end(self, state):
        if state.stop_reason == "diverged":
            return
        names = ["best.pt"] if state.best() is state.history[-1] else []
        if state.epoch % self.every_epochs == 0 or state.status == "completed":
            names.append("last.pt")
        if names:  # one serialisation for both files when the newest epoch is also the best
            self.save(state, *names)

    def on_fit_end(self, state):
        # Interrupted: save where we are. Stopped early: save as finished, so resume knows it is done.
        # Not when this very step is already in last.pt (early stop is decided before on_epoch_end saves).
        saved = state.last_checkpoint or {}
        here = saved.get("step") == state.step and saved.get("path") == str(self.directory / "last.pt")
        if state.stop_reason in ("interrupted", "early_stop") and not (here and state.stop_reason == "early_stop"):
            self.save(state, "last.pt")
        if state.status == "completed":
            mark_best_completed(self.directory / "best.pt")


def mark_best_completed(best: Path) -> None:
    """best.pt was written while its run was still running: say now that the run finished."""
    if best.is_file():
        payload = load_checkpoint(best)
        if payload["status"] != "completed":
            payload["status"] = "completed"
            save_checkpoint(payload, best)


class StopOnSignal(Callback):
    """SIGINT/SIGTERM finish the current step; the loop then stops and the checkpointer saves.

    A second signal acts as if there were no handler (KeyboardInterrupt, or termination): the atomic
    writes keep the checkpoint files whole even then."""

    def __init__(self, stream=None):
        self.previous = {}
        self.stream = stream or sys.stderr
        self._told = False

    def on_fit_start(self, state):
        def handler(signum, frame):
            if state.stop_reason == "interrupted":  # asked twice: stop now
                signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
                os.kill(os.getpid(), signum)
                return
            state.stop_reason = "interrupted"
            state.signal_name, state.signal_number = signal.Signals(signum).name, int(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no harm
                pass

    def on_step_end(self, state):
        # Printed here, not in the handler: writing to stderr from a signal handler can hit a reentrant write.
        if state.stop_reason == "interrupted" and not self._told:
            self._told = True
            print(f"\n{state.signal_name or 'signal'} received: finishing step {state.step} and saving a "
                  f"checkpoint (send it again to stop at once)", file=self.stream, flush=True)

    def on_fit_end(self, state):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()


class EarlyStop(Callback):
    """Stop when `state.monitor` has not improved by more than `min_delta` for `patience` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, state):
        monitor = state.monitor
        sign = -1.0 if monitor.endswith("loss") else 1.0
        best_epoch, best = 0, None
        for row in state.history:  # from the history, so a resumed run decides as an uninterrupted one
            if best is None or sign * (row[monitor] - best) > self.min_delta:
                best_epoch, best = row["epoch"], row[monitor]
        if state.epoch - best_epoch >= self.patience and not state.stop_reason:
            state.stop_reason = "early_stop"
            state.early_stop = {"epoch": state.epoch, "best_epoch": best_epoch}

