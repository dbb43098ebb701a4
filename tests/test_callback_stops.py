"""A user callback ends a run cleanly: an early stop it asks for takes effect after the current epoch, with
summary.json and last.pt agreeing, and a callback that raises leaves no cifarlab signal handler behind."""
from __future__ import annotations

import signal

import pytest

import cifarlab
from _runs import signal_at_step
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.trainer.callbacks import Callback

QUIET = ["train.device=cpu", "train.threads=1", "output.tensorboard=false", "output.progress=none",
         "train.epochs=3"]  # smoke: 8 steps per epoch, a window every 4 steps


class StopAt(Callback):
    """Asks for an early stop at step `step` (in on_step_end) or after epoch `epoch` (in on_epoch_end)."""

    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def _ask(self, state):
        state.request_stop("enough for today")

    def on_step_end(self, state):
        if state.progress.step == self.step:
            self._ask(state)

    def on_epoch_end(self, state):
        if state.progress.epoch == self.epoch:
            self._ask(state)


def _agree(run, epochs: int) -> dict:
    last = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["batch_in_epoch"], last["status"]) == (epochs, 0, "completed")
    assert run.summary.status == run.status == "completed" and run.summary.epochs_completed == epochs
    assert load_checkpoint(run.run_dir / "checkpoints" / "best.pt")["status"] == "completed"
    return last


def test_an_early_stop_asked_mid_epoch_ends_after_that_epoch(tmp_path, capsys):
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "output.progress=lines"],  # the closing line
                         callbacks=[StopAt(step=10)])
    last = _agree(run, epochs=2)
    assert last["outcome"]["early_stop"]["epoch"] == 2 and len(run.history) == 2
    assert "stopped early after epoch 2" in capsys.readouterr().err
    with pytest.raises(cifarlab.errors.UserError, match="already finished"):
        cifarlab.resume(run.run_dir)


def test_an_early_stop_asked_after_the_checkpoint_was_saved_is_saved_as_finished(tmp_path):
    """User callbacks run after cifarlab's Checkpointer: last.pt of that epoch said 'running' until now."""
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET], callbacks=[StopAt(epoch=1)])
    last = _agree(run, epochs=1)
    assert run.summary.early_stop.to_json() == last["outcome"]["early_stop"] == {
        "epoch": 1, "best_epoch": 1, "reason": "enough for today"}


class Boom(Callback):
    def on_step_end(self, state):
        if state.progress.step == 3:
            raise RuntimeError("boom")


class SeesWindows(Callback):
    def __init__(self):
        self.windows = []

    def on_window(self, state):
        self.windows.append((state.progress.step, state.process.window.step))


def test_a_raising_callback_leaves_the_signal_handlers_as_they_were(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="boom"):
        cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET], callbacks=[Boom()])
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_on_window_is_called_once_per_logging_window_with_the_new_window(tmp_path):
    seen = SeesWindows()
    cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "train.epochs=2"], callbacks=[seen])
    assert seen.windows == [(4, 4), (8, 8), (12, 12), (16, 16)]


def test_wall_seconds_of_a_resumed_run_count_every_process(tmp_path):
    import time

    stopped = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET], callbacks=[signal_at_step(10)])
    assert stopped.status == "interrupted"
    before = load_checkpoint(stopped.run_dir / "checkpoints" / "last.pt")["wall_seconds"]
    assert 0 < before <= stopped.summary.wall_seconds
    started = time.perf_counter()
    resumed = cifarlab.resume(stopped.run_dir)
    this_process = time.perf_counter() - started
    assert resumed.status == "completed"
    assert before < resumed.summary.wall_seconds < before + this_process
