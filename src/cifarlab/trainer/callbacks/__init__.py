"""Everything optional around the loop: named no-op hooks that see one `TrainState`.

Hooks: on_fit_start, on_epoch_start, on_window, on_step_end, on_epoch_end, on_fit_end, on_exception
when the fit raises, and on_run_end once summary.json and the report are written. Callbacks never
synchronise with the device themselves: they read what the loop publishes at its sync points
(`state.process.window` in `on_window`, every `train.log_every_steps` steps; `state.progress.history` at the epoch end).
To end a run early, call `state.request_stop(reason)`.

This module holds the base class and the list the loop calls; cifarlab's own callbacks are in their own
modules: model_epochs.ModelEpochs, progress_printer.ProgressPrinter, csv_logger.CSVLogger,
tensorboard_logger.TensorBoard, checkpointer.Checkpointer, stopping.StopOnSignal and stopping.EarlyStop
(and mlflow_logger, wandb_logger); trainer/build.default_callbacks puts them together.
"""
from __future__ import annotations


class Callback:
    def on_fit_start(self, state): ...
    def on_epoch_start(self, state): ...
    def on_window(self, state): ...  # a new logging window in `state.process.window` (before that step's on_step_end)
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
