"""ProgressPrinter: the training epochs' progress on stderr (a tqdm bar or plain lines) and the test line."""
from __future__ import annotations

import sys

from cifarlab.progress import in_notebook
from cifarlab.trainer.callbacks import Callback


class ProgressPrinter(Callback):
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

            self.bar = tqdm(total=state.steps_per_epoch, initial=state.progress.batch_in_epoch, file=self.stream,
                            desc=f"Epoch {state.progress.epoch + 1}/{total}", leave=True, dynamic_ncols=True)
        else:
            print(f"Epoch {state.progress.epoch + 1}/{total}", file=self.stream, flush=True)

    def on_window(self, state):
        window = state.process.window
        text = f"loss={window['train_loss']:.4f} acc={100 * window['train_acc']:.2f}% lr={window['lr']:.3g}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        elif not self.silent:
            print(f"  step {window['step']} ({state.progress.batch_in_epoch}/{state.steps_per_epoch}): {text}",
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
        row = state.progress.history[-1]
        n = state.objects.test_loader.num_images
        compiling = f" (plus {row['compile_seconds']:.1f} s compiling)" if row.get("compile_seconds") else ""
        mfu = f", MFU {100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ""
        print(f"Train: Average loss: {row['train_loss']:.4f}, Accuracy: {100 * row['train_acc']:.2f}%, "
              f"{row['images_per_second']:.0f} images/s{mfu}{compiling}", file=self.stream)
        if state.objects.val_loader is not None:
            v = state.objects.val_loader.num_images
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
