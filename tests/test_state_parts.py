"""TrainState's parts: the progress a checkpoint holds comes back exactly on resume, this process's values
never reach a checkpoint, and a callback keeps reading and writing the flat names (`state.progress.epoch`,
`state.objects.model`, `state.progress.history`, ...) it always has."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

import cifarlab
from cifarlab.config import load_config
from cifarlab.data.prepare import load_data
from cifarlab.run.checkpoint import Checkpoint, load_checkpoint
from cifarlab.runtime import make_runtime
from cifarlab.trainer.build import build_state
from cifarlab.trainer.callbacks import Callback
from cifarlab.trainer.checkpoint import make_checkpoint, restore
from cifarlab.trainer.state import ProcessValues, Progress, TrainObjects, TrainState

QUIET = ["train.device=cpu", "train.threads=1", "output.tensorboard=false", "output.progress=none",
         "train.epochs=3"]  # smoke: 8 steps per epoch, a window every 4 steps


def _fresh_state(tmp_path, cfg=None) -> TrainState:
    cfg = cfg or load_config("smoke", QUIET)
    return build_state(cfg, make_runtime(cfg.train, cfg.seed), load_data(cfg.data, cfg.seed), tmp_path)


class InterruptAt(Callback):
    """Interrupts at `step` (as SIGTERM would), and keeps a copy of the progress the run ended with."""

    def __init__(self, step: int):
        self.step, self.progress = step, None

    def on_step_end(self, state):
        if state.progress.step == self.step:
            state.interrupt("SIGTERM", 15)

    def on_fit_end(self, state):  # after cifarlab's Checkpointer has saved last.pt
        self.progress = copy.deepcopy(state.progress)


def test_a_mid_epoch_checkpoint_restores_the_progress_it_was_saved_with_exactly(tmp_path):
    stop = InterruptAt(step=11)  # epoch 2, batch 3 of 8
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET], callbacks=[stop])
    assert run.status == "interrupted"
    payload = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    checkpoint = Checkpoint.check(payload, "last.pt", resume=True)
    state = _fresh_state(tmp_path, checkpoint.cfg)
    restore(state, checkpoint, "last.pt")

    saved = stop.progress
    assert (state.progress.epoch, state.progress.step, state.progress.batch_in_epoch) == (1, 11, 3)
    assert state.progress.history == saved.history and len(saved.history) == 1
    for name in ("epoch", "step", "batch_in_epoch", "elapsed_seconds", "compile_seconds", "lr_peak",
                 "lr_peak_source"):
        assert getattr(state.progress, name) == getattr(saved, name), name
    # The wall time of the processes before the resumed one: the whole first process, as last.pt says.
    assert state.progress.wall_seconds_before == payload["wall_seconds"] > saved.elapsed_seconds
    assert {key: payload[key] for key in Progress.KEYS} == state.progress.state_dict(
        process_seconds=payload["wall_seconds"] - state.progress.wall_seconds_before)


def test_this_process_values_are_not_saved_and_start_afresh_on_restore(tmp_path):
    state = _fresh_state(tmp_path)
    window = {"epoch": 1, "step": 4, "lr": 0.01, "train_loss": 123.25, "train_acc": 0.375}
    marker = str(tmp_path / "marker-last.pt")
    state.process = ProcessValues(window=window, started=1.0, epoch_open=True, compile_warmup_steps=7,
                                  last_checkpoint={"path": marker, "epoch": 0, "step": 0})
    checkpoint = make_checkpoint(state)
    payload = checkpoint.to_payload()
    text = repr(payload)
    assert marker not in text and "123.25" not in text
    assert not {"window", "started", "process_started", "epoch_open", "compile_warmup_steps",
                "last_checkpoint"} & set(payload)

    restored = _fresh_state(tmp_path)
    restore(restored, checkpoint)
    assert restored.process == ProcessValues()


def test_a_callback_reads_the_parts_and_sets_the_peak_lr_through_them(tmp_path):
    class Flat(Callback):
        def __init__(self):
            self.seen = []

        def on_fit_start(self, state):  # a callback that chose the peak lr itself says so in the summary
            state.progress.lr_peak, state.progress.lr_peak_source = 0.05, "my own finder"

        def on_epoch_end(self, state):
            progress = state.progress
            self.seen.append((progress.epoch, progress.step, progress.batch_in_epoch, len(progress.history),
                              progress.history[-1]["epoch"], state.process.window["step"]))

    flat = Flat()
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "train.epochs=2"], callbacks=[flat])
    assert flat.seen == [(1, 8, 0, 1, 1, 8), (2, 16, 0, 2, 2, 16)]
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert (summary["lr_peak"], summary["lr_peak_source"]) == (0.05, "my own finder")
    last = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    assert last["outcome"]["lr_peak_source"] == "my own finder"


# The flat names of 0.x, retired (CHANGELOG.md): each value has one spelling, through its part.
RETIRED = ("model", "train_model", "optimizer", "schedule", "grad_step", "loss_fn", "train_loader", "test_loader",
           "val_loader", "ema", "lookahead", "metrics", "epoch", "step", "batch_in_epoch", "history",
           "elapsed_seconds", "compile_seconds", "wall_seconds_before", "lr_peak", "lr_peak_source", "window",
           "epoch_open", "last_checkpoint", "compile_warmup_steps", "process_started")


def test_a_retired_flat_name_is_an_error_on_read_and_on_write(tmp_path):
    """A callback written against the old flat names fails at once, naming the attribute, instead of
    writing a value the loop never reads (`state.epoch = 3` would otherwise make a new attribute)."""
    state = _fresh_state(tmp_path)
    parts = {f.name for kind in (TrainObjects, Progress, ProcessValues) for f in dataclasses.fields(kind)}
    assert set(RETIRED) - {"process_started"} | {"started"} == parts  # every field once had a flat name
    for name in RETIRED:
        with pytest.raises(AttributeError, match=name):
            getattr(state, name)
        with pytest.raises(AttributeError, match=name):
            setattr(state, name, 3)
