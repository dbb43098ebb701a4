"""Everything optional around the loop: named no-op hooks that see one `TrainState`.

Hooks: on_fit_start, on_epoch_start, on_window, on_step_end, on_epoch_end, on_fit_end, on_exception
when the fit raises, and on_run_end once summary.json and the report are written. Callbacks never
synchronise with the device themselves: they read what the loop publishes at its sync points
(`state.window` in `on_window`, every `train.log_every_steps` steps; `state.history` at the epoch end).
To end a run early, call `state.request_stop(reason)`.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
from pathlib import Path

from cifarlab.atomic import append_line, atomic_write_text
from cifarlab.run.checkpoint import load_checkpoint, save_checkpoint
from cifarlab.run.layout import BEST, LAST
from cifarlab.run.records import METRIC_COLUMNS, TRACKED, csv_cells, is_whole_row, tracked_values
from cifarlab.training.checkpoint import make_payload
from cifarlab.training.outcome import EARLY_STOPPED, INTERRUPTED


class Callback:
    def on_fit_start(self, state): ...
    def on_epoch_start(self, state): ...
    def on_window(self, state): ...  # a new logging window in `state.window` (before that step's on_step_end)
    def on_step_end(self, state): ...
    def on_epoch_end(self, state): ...
    def on_fit_end(self, state): ...
    def on_exception(self, state, error: BaseException): ...  # the fit raised `error`; it is re-raised after
    def on_run_end(self, state): ...  # after summary.json and the report are written (or failed)


class Callbacks(Callback):
    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def _fire(self, hook: str, state) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)  # a callback that is not a Callback may lack newer hooks
            if method is not None:
                method(state)

    def on_fit_start(self, state): self._fire("on_fit_start", state)
    def on_epoch_start(self, state): self._fire("on_epoch_start", state)
    def on_window(self, state): self._fire("on_window", state)
    def on_step_end(self, state): self._fire("on_step_end", state)
    def on_epoch_end(self, state): self._fire("on_epoch_end", state)
    def on_fit_end(self, state): self._fire("on_fit_end", state)
    def on_run_end(self, state): self._fire("on_run_end", state)

    def on_exception(self, state, error):
        """Every callback's, even when one of them raises (the first such error is raised after the rest)."""
        failed = None
        for callback in self.callbacks:
            try:
                getattr(callback, "on_exception", lambda state, error: None)(state, error)
            except Exception as err:  # noqa: BLE001 - the others still clean up; the fit's error goes on
                failed = failed or err
        if failed is not None:
            raise failed from error


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

    def on_window(self, state):
        window = state.window
        text = f"loss={window['train_loss']:.4f} acc={100 * window['train_acc']:.2f}% lr={window['lr']:.3g}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        elif not self.silent:
            print(f"  step {window['step']} ({state.batch_in_epoch}/{state.steps_per_epoch}): {text}",
                  file=self.stream, flush=True)

    def on_step_end(self, state):
        if self.bar is not None:
            self.bar.update(1)

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
            self.bar = None

    def on_exception(self, state, error):
        self.on_fit_end(state)


def in_notebook() -> bool:
    """Running in a Jupyter kernel (where stderr is not a terminal but a bar still renders)."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class CSVLogger(Callback):
    """metrics.csv: a `step` row per logging window and an `epoch` row per epoch; continues on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

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

    def _append(self, kind: str, row: dict) -> None:
        # One write, then fsync: after a kill the file holds whole rows (the reader drops a torn last one).
        line = io.StringIO()
        csv.DictWriter(line, METRIC_COLUMNS, lineterminator="\n").writerow(csv_cells(kind, row))
        append_line(self.path, line.getvalue())

    def on_window(self, state):
        self._append("step", state.window)

    def on_epoch_end(self, state):
        self._append("epoch", state.history[-1])


class TensorBoard(Callback):
    """Every tracked metric of run/records.EpochRow as `step/<name>` (logging windows) and `epoch/<name>`
    (epochs), against the optimizer step; and, when the run finishes, its flat config and final metrics
    in the HPARAMS tab, in the same run (so TensorBoard lists each run once)."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_fit_start(self, state):
        from torch.utils.tensorboard import SummaryWriter

        # On resume, drop the events logged after the checkpoint (steps > state.step): they come again.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step + 1 if state.step else None)

    def on_window(self, state):
        for tag, value in tracked_values("step", state.window).items():
            self.writer.add_scalar(tag, value, state.window["step"])

    def on_epoch_end(self, state):
        # Against the optimizer step, like the step scalars, so that purge_step on resume drops exactly
        # the events logged after the checkpoint.
        row = state.history[-1]
        for tag, value in tracked_values("epoch", row).items():
            self.writer.add_scalar(tag, value, row["step"])
        self.writer.flush()

    def on_fit_end(self, state):
        if self.writer is None:
            return
        if state.status == "completed" and state.history:
            self._hparams(state)
        self.writer.close()
        self.writer = None

    def on_exception(self, state, error):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _hparams(self, state) -> None:
        """The flat config and the final metrics (`hparam/final_<metric>`, `hparam/best_<metric>` for the
        accuracies) in TensorBoard's HPARAMS tab, written into this run; an extended run adds newer ones."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        from cifarlab.config_diff import flatten, scalar

        config = {key: scalar(value) for key, value in flatten(state.cfg.to_dict()).items() if key != "description"}
        last, best = state.history[-1], state.best()
        scores = [name for name in TRACKED if name.split("_")[0] in ("train", "val", "test")]
        metrics = {f"hparam/final_{name}": last[name] for name in scores if name in last}
        metrics.update({f"hparam/best_{name}": best[name] for name in scores
                        if name.endswith("_acc") and not name.startswith("train") and name in best})
        file_writer = self.writer._get_file_writer()  # add_hparams would make a second run (tb/<name>)
        for summary in hparams_summaries(config, metrics):
            file_writer.add_summary(summary, state.step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, state.step)


class Checkpointer(Callback):
    """last.pt every N epochs (and every N steps if asked), best.pt on improvement, and on interrupt.

    It only saves: whether the weights are still good is the loop's call (`state.outcome`), so after a
    divergence last.pt stays the last good state (`state.process.last_checkpoint` says which)."""

    def __init__(self, directory: Path, every_epochs: int = 1, every_steps: int | None = None):
        self.directory = Path(directory)
        self.every_epochs, self.every_steps = every_epochs, every_steps

    def save(self, state, *names: str) -> None:
        payload = make_payload(state)
        save_checkpoint(payload, *(self.directory / name for name in names))
        if LAST in names:  # the status the file holds: a signal during the save changes state.status, not it
            state.process.last_checkpoint = {"path": str(self.directory / LAST), "epoch": state.epoch,
                                             "step": state.step, "status": payload["status"]}

    def on_step_end(self, state):
        if self.every_steps and state.step % self.every_steps == 0 \
                and state.batch_in_epoch < state.steps_per_epoch and state.status != "diverged":
            self.save(state, LAST)

    def on_epoch_end(self, state):
        if state.status == "diverged":
            return
        names = [BEST] if state.best() is state.history[-1] else []
        if state.epoch % self.every_epochs == 0 or state.status == "completed":
            names.append(LAST)
        if names:  # one serialisation for both files when the newest epoch is also the best
            self.save(state, *names)

    def on_fit_end(self, state):
        # Interrupted: save where we are. Stopped early: save as finished, so resume knows it is done (not
        # when last.pt holds this very step with this status already: an early stop decided before
        # on_epoch_end saved; one a later callback asked for in on_epoch_end is saved again here).
        saved = state.process.last_checkpoint or {}
        here = saved.get("step") == state.step and saved.get("path") == str(self.directory / LAST) \
            and saved.get("status") == state.status
        if state.outcome.kind in (INTERRUPTED, EARLY_STOPPED) and not here:
            self.save(state, LAST)
        if state.status == "completed":
            mark_best_completed(self.directory / BEST)


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
            if state.stop is not None and state.stop.kind == INTERRUPTED:  # asked twice: stop now
                signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
                os.kill(os.getpid(), signum)
                return
            state.interrupt(signal.Signals(signum).name, int(signum))

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler, no harm
                pass

    def on_step_end(self, state):
        # Printed here, not in the handler: writing to stderr from a signal handler can hit a reentrant write.
        if not self._told and state.stop is not None and state.stop.kind == INTERRUPTED:  # no allocation per step
            self._told = True
            name = state.stop.details.get("signal") or "signal"
            print(f"\n{name} received: finishing step {state.step} and saving a checkpoint (send it again to "
                  f"stop at once)", file=self.stream, flush=True)

    def on_fit_end(self, state):
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous.clear()

    def on_exception(self, state, error):  # a raising callback must not leave our handler installed
        self.on_fit_end(state)


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
        if state.epoch - best_epoch >= self.patience:
            state.request_stop(f"no improvement in {monitor} by more than {self.min_delta:g} since epoch "
                               f"{best_epoch}", best_epoch=best_epoch)

