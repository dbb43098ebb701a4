"""TrainState's parts: the progress a checkpoint holds comes back exactly on resume, this process's values
never reach a checkpoint, and a callback keeps reading and writing the flat names (`state.epoch`,
`state.model`, `state.history`, ...) it always has."""
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
from cifarlab.trainer.state import Part, ProcessValues, Progress, TrainObjects, TrainState

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
        if state.step == self.step:
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


def test_a_callback_reads_and_writes_the_flat_names_it_always_has(tmp_path):
    class Flat(Callback):
        def __init__(self):
            self.seen = []

        def on_fit_start(self, state):  # a callback that chose the peak lr itself says so in the summary
            state.lr_peak, state.lr_peak_source = 0.05, "my own finder"

        def on_epoch_end(self, state):
            self.seen.append((state.epoch, state.step, state.batch_in_epoch, len(state.history),
                              state.history[-1]["epoch"], state.model is state.objects.model,
                              state.optimizer is state.objects.optimizer, state.window["step"]))

    flat = Flat()
    run = cifarlab.train("smoke", [f"output.dir={tmp_path}", *QUIET, "train.epochs=2"], callbacks=[flat])
    assert flat.seen == [(1, 8, 0, 1, 1, True, True, 8), (2, 16, 0, 2, 2, True, True, 16)]
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert (summary["lr_peak"], summary["lr_peak_source"]) == (0.05, "my own finder")
    last = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
    assert last["outcome"]["lr_peak_source"] == "my own finder"


@pytest.mark.parametrize("part, kind", [("objects", TrainObjects), ("progress", Progress),
                                        ("process", ProcessValues)])
def test_every_field_of_a_part_is_a_flat_name_of_the_state(tmp_path, part, kind):
    """A callback written against the old flat TrainState finds every value where it was."""
    state = _fresh_state(tmp_path)
    owned = {name: attr for name, attr in vars(TrainState).items() if isinstance(attr, Part) and attr.part == part}
    assert sorted(attr.attribute for attr in owned.values()) == sorted(f.name for f in dataclasses.fields(kind))
    assert not set(owned) & {f.name for f in dataclasses.fields(TrainState)}
    for name, attr in owned.items():
        assert getattr(state, name) is getattr(getattr(state, part), attr.attribute), name
        written = object()
        setattr(state, name, written)
        assert getattr(getattr(state, part), attr.attribute) is written, name
